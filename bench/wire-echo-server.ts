/**
 * The floor of the agent's own HTTP layer (agent/http/wire): reads the body and
 * answers the same fixed small JSON as echo-server.ts, with no parsing and no
 * inference, so the two floors side by side show what the transport costs.
 */
import { WireServer } from '../agent/http/wire/server.js';

const answer = JSON.stringify({ model_name: 'noop', outputs: [{ name: 'probs', datatype: 'FP32', shape: [1, 10], parameters: { binary_data_size: 40 } }] });
const server = new WireServer({ bodyLimitBytes: 64 * 1024 * 1024, onRequest: (_req, res) => res.send(200, 'application/json', answer) });
const address = await server.listen(0, '127.0.0.1');
process.stdout.write(`READY ${address.port}\n`);
process.on('SIGTERM', () => {
  server.close().then(
    () => process.exit(0),
    () => process.exit(1),
  );
  server.destroyAll();
});
