// Ctrl-C for long jobs: the first press asks the job to stop at its next safe point (it writes a
// checkpoint and returns), the second quits at once with code 130.
export function onInterrupt(message: string): { stopRequested: () => boolean; dispose: () => void } {
  let stop = false;
  const handler = () => {
    if (stop) process.exit(130);
    stop = true;
    process.stderr.write(`\ninterrupted: ${message} (Ctrl-C again to quit at once)\n`);
  };
  process.on('SIGINT', handler);
  return { stopRequested: () => stop, dispose: () => process.off('SIGINT', handler) };
}
