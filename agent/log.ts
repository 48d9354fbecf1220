import { pino, type Logger } from 'pino';

/**
 * Structured JSON logs to stdout; journald stores them. Paths that could hold
 * secrets are redacted so key material never reaches a log.
 */
export function createLogger(options: { level: string; deviceId?: string; destination?: NodeJS.WritableStream }): Logger {
  return pino(
    {
      level: options.level,
      base: options.deviceId ? { device: options.deviceId } : {},
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: ['*.privateKey', '*.password', '*.key', 'privateKey', 'password'], censor: '[redacted]' },
    },
    options.destination ?? pino.destination({ sync: false }),
  );
}
