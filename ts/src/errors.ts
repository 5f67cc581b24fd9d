// Error classes shared by the API and the CLI (no native code: the CLI imports this at start-up).
//
// - InputFileError: a file the caller named (a checkpoint, a model, an image) cannot be read or decoded.

/**
 * A file named by the caller (a checkpoint, a model, an image) that is missing, unreadable or not what it should be.
 * The message starts with the file's path. The CLI maps it to exit code 2 (bad input), like a bad flag.
 */
export class InputFileError extends Error {
  override name = 'InputFileError';
}
