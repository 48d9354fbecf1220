import type { Logger } from 'pino';
import { errorMessage } from '../errors.js';
import type { AgentDatabase } from '../store/database.js';
import { isNoSpace } from '../store/no-space.js';
import { artifactsInProgress, clearArtifactProgress } from './block-progress.js';
import type { ModelStore } from './model-store.js';

/*
 * Staging files (`{stateDir}/staging/{sha256}.part`) hold a pull's blocks
 * until the artifact is complete. One whose pull will not be resumed only
 * takes space: it goes, with its rows in artifact_blocks, when its version
 * fails for good, when a newer document no longer lists it, and at start-up
 * when the document in force does not. A pull the document still wants keeps
 * both, so it resumes where it stopped (docs/protocol.md section 5).
 */

/** Deletes an artifact's staging file, then its recorded progress. */
export async function discardStaging(store: ModelStore, db: AgentDatabase, sha256: string, logger: Logger): Promise<void> {
  // The file first: it is what holds the space, and deleting needs none.
  await store.discardStaging(sha256);
  try {
    clearArtifactProgress(db, sha256);
  } catch (err) {
    // A staging file made again for this artifact starts from no rows anyway (StagingFile.open: not kept).
    if (!isNoSpace(err)) throw err;
    logger.warn({ artifact: sha256, err: errorMessage(err) }, 'staging file deleted; its progress rows stay until there is room');
  }
}

/**
 * Deletes every staging file and every recorded progress whose artifact is
 * not in `keep` (the sha256s of the document in force). Returns the
 * artifacts discarded.
 */
export async function discardAbandonedStaging(store: ModelStore, db: AgentDatabase, keep: ReadonlySet<string>, logger: Logger): Promise<string[]> {
  const found = new Set([...(await store.staged()), ...artifactsInProgress(db)]);
  const discarded = [...found].filter((sha256) => !keep.has(sha256));
  for (const sha256 of discarded) await discardStaging(store, db, sha256, logger);
  if (discarded.length > 0) logger.info({ artifacts: discarded }, 'abandoned staging files and pull progress deleted');
  return discarded;
}

/** At start-up: abandoned staging files, and the version folders an interrupted install left without a manifest. */
export async function cleanStagingAtStart(store: ModelStore, db: AgentDatabase, keep: ReadonlySet<string>, logger: Logger): Promise<void> {
  const incomplete = await store.removeIncomplete();
  if (incomplete.length > 0) logger.info({ versions: incomplete }, 'interrupted installs removed');
  await discardAbandonedStaging(store, db, keep, logger);
}
