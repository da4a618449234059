// Copies Swagger UI's files from the swagger-ui-dist package into the build, so the gateway's /docs
// works without the internet (api/console/docs.py points at /ui/swagger/).
import { cpSync, mkdirSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'

const source = dirname(createRequire(import.meta.url).resolve('swagger-ui-dist/package.json'))
const target = join(dirname(new URL(import.meta.url).pathname), '..', 'dist', 'swagger')
mkdirSync(target, { recursive: true })
for (const file of ['swagger-ui-bundle.js', 'swagger-ui.css', 'favicon-32x32.png']) {
  cpSync(join(source, file), join(target, file))
}
console.log(`swagger-ui-dist -> ${target}`)
