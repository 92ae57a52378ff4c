import { defineConfig } from 'vite';

// The build goes into the Go package that embeds it, so that `go build`
// alone yields a binary with the UI. `npm run dev` serves the page with
// hot reload and sends /api to a fanout running on the default admin
// address (override with FANOUT_ADMIN).
export default defineConfig({
  build: {
    outDir: '../internal/admin/ui/dist',
    emptyOutDir: true,
    // No source maps: they would double what the binary embeds.
    sourcemap: false,
    reportCompressedSize: true,
  },
  server: {
    proxy: {
      '/api': process.env.FANOUT_ADMIN || 'http://127.0.0.1:8081',
    },
  },
});
