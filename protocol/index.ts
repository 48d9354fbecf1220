/** The wire protocol shared by the agent and the fleet tools (docs/protocol.md, version 1). */
export * from './errors.js';
export * from './names.js';
export * from './keys.js';
export * from './dsse.js';
export * from './validate.js';
export * from './semver.js';
export * from './trust.js';
export * from './oip-tensor.js';
export * from './manifest.js';
export * from './desired.js';
export * from './reported.js';
