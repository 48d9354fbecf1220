/** Minimal types for the `mnist` package (no @types package exists). */
declare module 'mnist' {
  interface Digit {
    id: number;
    /** Samples of this digit in the bundled set. */
    length: number;
    /** One 28x28 sample as 784 floats in [0, 1]. */
    get(which?: number): number[];
  }
  const mnist: Digit[];
  export default mnist;
}
