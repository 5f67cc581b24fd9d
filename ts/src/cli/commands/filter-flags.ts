// Flags of the vesselness filter, shared by `vessels` and `vesselness`.
import type { FilterInput } from '../../config/vessels.js';
import { defined, num, numList, UsageError, type OptionSpec } from '../args.js';

export const FILTER_FLAGS: OptionSpec[] = [
  { name: 'filter', type: 'string', arg: '<name>', help: 'sato | frangi (scikit-image) | frangi1998 (sigma^2-normalised, gamma per sigma)', default: 'sato' },
  { name: 'sigmas', type: 'string', arg: '<list>', help: 'scales in pixels, comma-separated', default: 'sato 1,2,3,4; frangi 1,3,5,7,9' },
  { name: 'white-ridges', type: 'boolean', help: 'vessels brighter than the background (default: dark vessels, as in X-ray)' },
  { name: 'alpha', type: 'string', arg: '<x>', help: 'Frangi alpha (only used in 3-D; accepted for parity)', default: '0.5' },
  { name: 'beta', type: 'string', arg: '<x>', help: 'Frangi beta (blobness sensitivity)', default: '0.5' },
  { name: 'gamma', type: 'string', arg: '<x>', help: 'Frangi gamma (structureness); default: half the largest Hessian norm' },
];

export function filterFromFlags(v: Record<string, unknown>): Partial<FilterInput> {
  const filter = v.filter as string | undefined;
  if (filter !== undefined && !['sato', 'frangi', 'frangi1998'].includes(filter))
    throw new UsageError(`--filter: unknown filter ${JSON.stringify(filter)} (expected sato, frangi or frangi1998)`);
  return defined({
    filter: filter as FilterInput['filter'],
    sigmas: numList(v, 'sigmas'),
    whiteRidges: v['white-ridges'] === true ? true : undefined,
    alpha: num(v, 'alpha'),
    beta: num(v, 'beta'),
    gamma: num(v, 'gamma'),
  });
}

export const INPUT_NOTE =
  'Images: PNG, JPEG, BMP or TIFF (format read from the content). 8-bit grey is used as is; 16-bit grey is\n' +
  'scaled to 8-bit units (v/257); RGB(A) becomes grey by BT.601 luma 0.299R+0.587G+0.114B (alpha ignored),\n' +
  'which leaves the usual three identical channels unchanged.';
