import { createPinia, setActivePinia } from 'pinia'
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest'
import { ENDED, useAuth } from './auth'
import { HISTORY, useLive } from './live'

const job = { id: 'j1', type: 'text', model: 'm', status: 'queued', owner: 'ada', priority: 5, attempts: 0, cancel_requested: false, progress: null, worker: null }

describe('live store', () => {
  beforeEach(() => setActivePinia(createPinia()))
  afterEach(() => vi.unstubAllGlobals())

  it('keeps the latest event of each job', () => {
    const live = useLive()
    live.receive('job', JSON.stringify(job))
    live.receive('job', JSON.stringify({ ...job, status: 'completed' }))
    expect(live.jobs.j1.status).toBe('completed')
    expect(live.lastJob?.status).toBe('completed')
  })

  it('keeps a bounded history of dashboard figures', () => {
    const live = useLive()
    for (let i = 0; i < HISTORY + 15; i++) {
      const queue = { by_status: {}, queued_by_priority: { high: 1, normal: i, low: 0 }, dispatcher_healthy: true }
      live.receive('dashboard', JSON.stringify({ at: '', queue, requests_per_s: i, tokens_per_s: 2 * i }))
    }
    expect(live.history.requests).toHaveLength(HISTORY)
    expect(live.history.requests.at(-1)).toBe(HISTORY + 14)
    expect(live.history.queued.at(-1)).toBe(HISTORY + 15)
  })

  it('counts resyncs and ignores unknown events', () => {
    const live = useLive()
    live.receive('resync', '{}')
    live.receive('something-new', '{}')
    expect(live.resyncs).toBe(1)
  })

  it('a goodbye (credentials no longer valid) asks who we are and signs out when refused', async () => {
    const refused = { error: { message: 'invalid, revoked or disabled API key', type: 'authentication_error' } }
    let status = 200
    vi.stubGlobal('fetch', async () =>
      status === 200
        ? new Response(JSON.stringify({ username: 'ada', role: 'user', key_id: 'k' }), { status })
        : new Response(JSON.stringify(refused), { status }),
    )
    const auth = useAuth()
    await auth.useKey('bl-key')
    status = 401
    const live = useLive()
    live.receive('goodbye', JSON.stringify({ reason: 'the credentials are no longer valid' }))
    expect(live.connected).toBe(false)
    await vi.waitFor(() => expect(auth.signedIn).toBe(false))
    expect(auth.notice).toBe(ENDED)
  })
})
