// A job's `progress` as the console shows it, whatever the kind: a model download reports its phase,
// its overall fraction and the bytes and files fetched (flows/download.py); a batch its lines
// (flows/batch.py). One reading for the Models page, the job detail and the jobs list.
import { bytes } from './format'

export interface ProgressView {
  /** 0-100, or null when the job has not said how far it is (an indeterminate bar). */
  percent: number | null
  /** One line for people: the phase, and what is done of what. */
  detail: string
}

const PHASES: Record<string, string> = {
  fetch: 'fetching',
  convert: 'converting to safetensors',
  install: 'verifying and installing',
  completed: 'installed',
  failed: 'failed',
}

function num(value: unknown): number | null {
  return typeof value === 'number' && Number.isFinite(value) ? value : null
}

export function jobProgress(progress: Record<string, unknown> | null | undefined): ProgressView {
  if (!progress) return { percent: null, detail: '' }
  const fraction = num(progress.fraction)
  if (fraction !== null) {
    const parts = [PHASES[String(progress.phase)] ?? String(progress.phase ?? '')]
    const done = num(progress.bytes_done)
    const total = num(progress.bytes_total)
    if (total) parts.push(`${bytes(done ?? 0)} of ${bytes(total)}`)
    else if (done) parts.push(`${bytes(done)} so far`)
    const filesTotal = num(progress.files_total)
    if (filesTotal) parts.push(`${num(progress.files_done) ?? 0} of ${filesTotal} files`)
    const percent = Math.min(100, Math.max(0, Math.round(fraction * 100)))
    return { percent, detail: `${parts.filter(Boolean).join(' · ')} · ${percent}%` }
  }
  const lines = num(progress.total)
  if (lines) {
    const finished = (num(progress.completed) ?? 0) + (num(progress.failed) ?? 0)
    const percent = Math.min(100, Math.round((100 * finished) / lines))
    return { percent, detail: `${finished} of ${lines} lines · ${percent}%` }
  }
  return { percent: null, detail: PHASES[String(progress.phase)] ?? '' }
}
