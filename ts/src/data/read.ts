// Reading one frame of a file (DICOM cine runs have many) as grey in 8-bit units, and checking that named images
// decode before a job starts.
import { InputFileError } from '../errors.js';
import { native } from '../native.js';

/** Frame `frame` of a PNG/JPEG/BMP/TIFF (frame 0 only) or DICOM file, grey in 8-bit units. */
export async function readFrame(path: string, frame = 0) {
  if (!Number.isInteger(frame) || frame < 0) throw new RangeError(`frame must be an integer >= 0, got ${frame}`);
  return native.readFrame(path, frame);
}

/**
 * Decodes every image (DICOM: its first frame) and throws an InputFileError naming the first that fails, so
 * a bad file on the command line is reported as bad input before any work starts. `jobs` 0 = all cores.
 */
export async function checkImageFiles(paths: string[], jobs = 0): Promise<void> {
  const bad = (await native.probeImages(paths, true, jobs)).find((p) => !p.ok);
  if (bad) throw new InputFileError(`${bad.path}: ${bad.error ?? 'unreadable'}`);
}
