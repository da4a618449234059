import { afterEach, describe, expect, it, vi } from 'vitest'
import { api, raw, setCredential, unwrap, whenUnauthorized } from './client'
import { ApiError } from './errors'

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } })
}

describe('API client', () => {
  afterEach(() => {
    vi.unstubAllGlobals()
    setCredential(null)
  })

  it('sends the credential and returns typed data', async () => {
    const seen: Request[] = []
    vi.stubGlobal('fetch', async (request: Request) => {
      seen.push(request)
      return json({ by_status: { queued: 2 }, queued_by_priority: { high: 0, normal: 2, low: 0 }, dispatcher_healthy: true })
    })
    setCredential('bl-key')
    const queue = await unwrap(api.GET('/api/v1/queue/status'))
    expect(queue.queued_by_priority.normal).toBe(2)
    expect(seen[0].headers.get('Authorization')).toBe('Bearer bl-key')
  })

  it('turns the error envelope into an ApiError and reports a lost session once', async () => {
    const lost = vi.fn()
    whenUnauthorized(lost)
    vi.stubGlobal('fetch', async () => json({ error: { message: 'invalid, revoked or disabled API key', type: 'authentication_error', code: 'invalid_api_key', param: null } }, 401))
    setCredential('bl-revoked')
    const failure = await unwrap(api.GET('/api/v1/auth/me')).catch((e: unknown) => e)
    expect(failure).toBeInstanceOf(ApiError)
    expect((failure as ApiError).message).toBe('invalid, revoked or disabled API key')
    expect(lost).toHaveBeenCalledTimes(1)
  })

  it('a network failure reads as such, from typed and raw calls alike', async () => {
    vi.stubGlobal('fetch', async () => {
      throw new TypeError('Failed to fetch')
    })
    await expect(unwrap(api.GET('/api/v1/auth/me'))).rejects.toThrow('cannot be reached')
    await expect(raw('/v1/files/x/content')).rejects.toThrow('cannot be reached')
  })

  it('raw calls carry the credential and fail with the envelope message', async () => {
    const seen: [string, RequestInit | undefined][] = []
    vi.stubGlobal('fetch', async (path: string, init?: RequestInit) => {
      seen.push([path, init])
      return json({ error: { message: 'file f not found', type: 'not_found_error', code: 'not_found', param: 'id' } }, 404)
    })
    setCredential('tok')
    await expect(raw('/v1/files/f/content')).rejects.toThrow('file f not found (id)')
    expect((seen[0][1]?.headers as Record<string, string>).Authorization).toBe('Bearer tok')
  })
})
