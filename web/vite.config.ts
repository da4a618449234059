/// <reference types="vitest/config" />
import { fileURLToPath, URL } from 'node:url'
import vue from '@vitejs/plugin-vue'
import { defineConfig } from 'vite'

// Served by the gateway at /ui (api/console/static.py); `npm run dev` proxies the API to a local gateway.
const gateway = process.env.BITINGLIP_GATEWAY ?? 'http://127.0.0.1:8001'

export default defineConfig({
  base: '/ui/',
  plugins: [vue()],
  resolve: { alias: { '@': fileURLToPath(new URL('./src', import.meta.url)) } },
  build: { outDir: 'dist', emptyOutDir: true, chunkSizeWarningLimit: 800 },
  server: {
    proxy: Object.fromEntries(['/api', '/v1', '/openapi.json', '/docs'].map((p) => [p, gateway])),
  },
  test: { environment: 'jsdom', include: ['src/**/*.test.ts'] },
})
