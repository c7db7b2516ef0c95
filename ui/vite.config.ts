import { defineConfig } from 'vitest/config';

// The built files land in ui/dist, which node/build.rs embeds into kiln-node.
// `npm run dev` proxies the API to a node on 127.0.0.1:7070.
export default defineConfig({
  base: '/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    sourcemap: false,
    chunkSizeWarningLimit: 400,
  },
  server: {
    proxy: {
      '/api': 'http://127.0.0.1:7070',
      '/healthz': 'http://127.0.0.1:7070',
    },
  },
  test: {
    include: ['src/**/*.test.ts'],
    environment: 'node',
  },
});
