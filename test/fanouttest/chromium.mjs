// What the browser scripts of test/browser and test/ui share (fanouttest.Browser
// runs them): the launch options of Debian's chromium, the reading of the
// environment their Go test sets, and the running of their checks. No
// imports: each script imports playwright-core from its own node_modules and
// passes these to chromium.launch.

// launchOptions returns the options for chromium.launch: headless, with the
// flags Debian's chromium needs on a machine without a display, GPU,
// sandbox privileges or outside network. playwright-core gives it a fresh
// profile directory (--user-data-dir) for each launch.
export const launchOptions = (executablePath) => ({
  executablePath,
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});

// requireEnv returns a script's environment variable k, or throws naming
// the Go test (runner) that sets it: the scripts are not run by hand.
export const requireEnv = (k, runner) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set; run this through ${runner}`);
  return v;
};

// runChecks runs each { name, fn } in turn, printing ok or FAIL with the
// time it took (and the error), then a summary; it returns how many failed.
export const runChecks = async (checks) => {
  let failed = 0;
  for (const { name, fn } of checks) {
    const t0 = Date.now();
    try {
      await fn();
      console.log(`ok   ${name} (${Date.now() - t0} ms)`);
    } catch (err) {
      failed++;
      console.log(`FAIL ${name} (${Date.now() - t0} ms)\n     ${String(err.stack || err).replace(/\n/g, '\n     ')}`);
    }
  }
  console.log(failed ? `${failed} of ${checks.length} checks failed` : `all ${checks.length} checks passed`);
  return failed;
};
