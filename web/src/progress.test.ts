import { describe, expect, it } from 'vitest'
import { jobProgress } from './progress'

describe('jobProgress', () => {
  it('reads a download: phase, bytes, files and the overall percentage', () => {
    const view = jobProgress({
      phase: 'fetch',
      fraction: 0.3,
      bytes_done: 45 * 1024 * 1024,
      bytes_total: 90 * 1024 * 1024,
      files_done: 3,
      files_total: 9,
    })
    expect(view).toEqual({ percent: 30, detail: 'fetching · 45.0 MB of 90.0 MB · 3 of 9 files · 30%' })
  })

  it('keeps the fetched size through the later phases and reads a bytes-only source', () => {
    expect(jobProgress({ phase: 'install', fraction: 0.95, bytes_done: 2048, bytes_total: 2048 }).detail).toBe(
      'verifying and installing · 2.0 KB of 2.0 KB · 95%',
    )
    expect(jobProgress({ phase: 'fetch', fraction: 0, bytes_done: 5 * 1024 * 1024, bytes_total: 0 }).detail).toBe(
      'fetching · 5.0 MB so far · 0%',
    )
  })

  it('reads a batch by its lines', () => {
    expect(jobProgress({ phase: 'in_progress', total: 40, completed: 10, failed: 2 })).toEqual({
      percent: 30,
      detail: '12 of 40 lines · 30%',
    })
  })

  it('says nothing it does not know and clamps what it is told', () => {
    expect(jobProgress(null)).toEqual({ percent: null, detail: '' })
    expect(jobProgress({ phase: 'failed' })).toEqual({ percent: null, detail: 'failed' })
    expect(jobProgress({ phase: 'fetch', fraction: 7 }).percent).toBe(100)
    expect(jobProgress({ phase: 'fetch', fraction: 'half' }).percent).toBeNull()
  })
})
