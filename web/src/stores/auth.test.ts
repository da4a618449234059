import { createPinia, setActivePinia } from 'pinia'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { authHeaders } from '@/api/client'
import { ENDED, tokenExpiry, useAuth } from './auth'

type Handler = (request: Request) => Response

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } })
}

function gateway(handler: Handler): Request[] {
  const seen: Request[] = []
  vi.stubGlobal('fetch', async (request: Request) => {
    seen.push(request)
    return handler(request)
  })
  return seen
}

describe('auth store', () => {
  beforeEach(() => {
    sessionStorage.clear()
    setActivePinia(createPinia())
  })
  afterEach(() => {
    vi.unstubAllGlobals()
    useAuth().signOut()
  })

  it('signs in with a password: token from login, identity from /me, both with the token', async () => {
    const seen = gateway((request) => {
      if (request.url.endsWith('/api/v1/auth/login')) return json({ access_token: 'tok', token_type: 'bearer', expires_in: 900 })
      return json({ username: 'ada', role: 'user', key_id: null })
    })
    const auth = useAuth()
    await auth.login('ada', 'correct horse battery')
    expect(seen.map((r) => new URL(r.url).pathname)).toEqual(['/api/v1/auth/login', '/api/v1/auth/me'])
    expect(await seen[0].json()).toEqual({ username: 'ada', password: 'correct horse battery' })
    expect(seen[1].headers.get('Authorization')).toBe('Bearer tok')
    expect([auth.signedIn, auth.isAdmin, auth.me?.username]).toEqual([true, false, 'ada'])
    expect(sessionStorage.getItem('bitinglip.credential')).toBe('tok')
  })

  it('a wrong password leaves it signed out, with the gateway message', async () => {
    gateway(() => json({ error: { message: 'wrong username or password', type: 'authentication_error', code: 'invalid_api_key', param: null } }, 401))
    const auth = useAuth()
    await expect(auth.login('ada', 'nope')).rejects.toThrow('wrong username or password')
    expect(auth.signedIn).toBe(false)
    expect(authHeaders()).toEqual({})
    expect(sessionStorage.getItem('bitinglip.credential')).toBeNull()
  })

  it('an API key is checked with /me before it is kept', async () => {
    gateway((request) =>
      request.headers.get('Authorization') === 'Bearer bl-good'
        ? json({ username: 'root', role: 'admin', key_id: 'k1' })
        : json({ error: { message: 'invalid, revoked or disabled API key', type: 'authentication_error' } }, 401),
    )
    const auth = useAuth()
    await expect(auth.useKey('bl-bad')).rejects.toThrow('invalid, revoked or disabled API key')
    expect(auth.signedIn).toBe(false)
    await auth.useKey('  bl-good ')
    expect(auth.isAdmin).toBe(true)
    auth.signOut('bye')
    expect([auth.signedIn, auth.notice, sessionStorage.getItem('bitinglip.credential')]).toEqual([false, 'bye', null])
  })

  it('reads a login token\'s expiry, and none from an API key or junk', () => {
    const token = (claims: object) => `h.${btoa(JSON.stringify(claims)).replace(/=+$/, '')}.s`
    expect(tokenExpiry(token({ sub: 'ada', exp: 1_900_000_000 }))).toBe(1_900_000_000_000)
    expect(tokenExpiry('bl-0123456789ab-secret')).toBeNull()
    expect(tokenExpiry('a.%%%.c')).toBeNull()
    expect(tokenExpiry(token({ sub: 'ada' }))).toBeNull()
  })

  it('signs out with a notice when the login token expires, without waiting for a request', async () => {
    vi.useFakeTimers()
    try {
      const exp = Math.floor(Date.now() / 1000) + 60
      const tok = `h.${btoa(JSON.stringify({ sub: 'ada', exp })).replace(/=+$/, '')}.s`
      gateway((request) =>
        request.url.endsWith('/login') ? json({ access_token: tok, token_type: 'bearer', expires_in: 60 }) : json({ username: 'ada', role: 'user', key_id: null }),
      )
      const auth = useAuth()
      await auth.login('ada', 'pw')
      vi.advanceTimersByTime(59_000)
      expect(auth.signedIn).toBe(true)
      vi.advanceTimersByTime(2_000)
      expect(auth.signedIn).toBe(false)
      expect(auth.notice).toMatch(/^Your session expired at .+\. Sign in again\.$/)
      expect(authHeaders()).toEqual({})
    } finally {
      vi.useRealTimers()
    }
  })

  it('a recheck keeps the session with the role as it is now, or ends it when refused', async () => {
    let answer = json({ username: 'root', role: 'admin', key_id: 'k1' })
    gateway(() => answer.clone())
    const auth = useAuth()
    await auth.useKey('bl-key')
    answer = json({ username: 'root', role: 'user', key_id: 'k1' })
    expect(await auth.recheck()).toBe(true)
    expect(auth.isAdmin).toBe(false)
    answer = json({ error: { message: 'invalid, revoked or disabled API key', type: 'authentication_error' } }, 401)
    expect(await auth.recheck()).toBe(false)
    expect([auth.signedIn, auth.notice, sessionStorage.getItem('bitinglip.credential')]).toEqual([false, ENDED, null])
  })

  it('a saved credential the gateway refuses on reload ends with the notice, not a blank page', async () => {
    sessionStorage.setItem('bitinglip.credential', 'bl-revoked')
    gateway(() => json({ error: { message: 'invalid, revoked or disabled API key', type: 'authentication_error' } }, 401))
    const auth = useAuth()
    await auth.restore()
    expect([auth.signedIn, auth.notice]).toEqual([false, ENDED])
  })
})
