// The note on image input shared by the help of `vessels` and `vesselness`.

export const INPUT_NOTE =
  'Images: PNG, JPEG, BMP or TIFF (format read from the content). 8-bit grey is used as is; 16-bit grey is\n' +
  'scaled to 8-bit units (v/257); RGB(A) becomes grey by BT.601 luma 0.299R+0.587G+0.114B (alpha ignored),\n' +
  'which leaves the usual three identical channels unchanged.';
