// Reading one frame of a file (DICOM cine runs have many) as grey in 8-bit units.
import { native } from '../native.js';

/** Frame `frame` of a PNG/JPEG/BMP/TIFF (frame 0 only) or DICOM file, grey in 8-bit units. */
export async function readFrame(path: string, frame = 0) {
  if (!Number.isInteger(frame) || frame < 0) throw new RangeError(`frame must be an integer >= 0, got ${frame}`);
  return native.readFrame(path, frame);
}
