/**
 * A pass that must not run twice at once, where a call during a pass means
 * "something changed: run once more when this pass ends". Calls during a pass
 * share its promise, which settles after the extra pass. Used by the model
 * repository's reconcile and the telemetry uploader's drain.
 */
export class CoalescedPass {
  private current: Promise<void> | undefined;
  private again = false;

  /** `more()` false stops the extra passes (say, once stopping). */
  constructor(
    private readonly pass: () => Promise<void>,
    private readonly more: () => boolean = () => true,
  ) {}

  /** The pass in progress, if any. */
  get running(): Promise<void> | undefined {
    return this.current;
  }

  run(): Promise<void> {
    if (this.current) {
      this.again = true;
      return this.current;
    }
    // `current` is cleared in the same synchronous step as the last check of
    // `again`: clearing it a microtask later (a .finally on the promise) left a
    // window in which a call joined a pass that had already decided to end,
    // and got no pass of its own (the uploader's final flush sent nothing).
    this.current = (async () => {
      try {
        do {
          this.again = false;
          await this.pass();
        } while (this.again && this.more());
      } finally {
        this.current = undefined;
      }
    })();
    return this.current;
  }
}
