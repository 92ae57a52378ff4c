// The launch options of Debian's chromium for the run.mjs scripts of the
// browser tests (test/browser, test/ui), which fanouttest.Browser runs.
// Plain data, no imports: each script imports playwright-core from its own
// node_modules and passes these to chromium.launch.

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
