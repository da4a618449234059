// The live event stream (GET /api/v1/events): job changes, worker heartbeats and dashboard figures
// pushed by the gateway, kept here for every page to watch. One stream per signed-in tab.
import { defineStore } from 'pinia'
import { ref, shallowRef } from 'vue'
import type { Schemas } from '@/api/client'
import { stream } from '@/api/stream'
import { useAuth } from './auth'

/** A `job` event: api/console/schemas.py JobEvent (a test keeps the two in step; SSE payloads are
 * not part of the OpenAPI schema the client is generated from). */
export interface JobEvent {
  id: string
  type: string
  model: string
  status: string
  owner: string
  priority: number
  attempts: number
  cancel_requested: boolean
  progress: Record<string, unknown> | null
  worker: string | null
}
export interface WorkerFigure {
  id: string
  device: string
  healthy: boolean
  heartbeat_age_s: number
  queue_depth: number
  memory_budget_bytes: number | null
  memory_used_bytes: number
  models: { id: string; name: string; memory_bytes?: number; waiting?: number; running?: number; tokens_per_s?: number }[]
}
export interface Dashboard {
  at: string
  queue: Schemas['QueueStatus']
  requests_per_s?: number
  tokens_per_s?: number
  workers?: WorkerFigure[]
}

export const HISTORY = 60 // points kept for the small charts

export const useLive = defineStore('live', () => {
  const connected = ref(false)
  const error = ref<string | null>(null)
  const jobs = ref<Record<string, JobEvent>>({}) // latest event per job id
  const lastJob = shallowRef<JobEvent | null>(null)
  const workers = ref<WorkerFigure[]>([])
  const dashboard = ref<Dashboard | null>(null)
  const history = ref<{ requests: number[]; tokens: number[]; queued: number[] }>({ requests: [], tokens: [], queued: [] })
  const resyncs = ref(0)
  let controller: AbortController | null = null

  function push(series: number[], value: number): void {
    series.push(value)
    if (series.length > HISTORY) series.splice(0, series.length - HISTORY)
  }

  function receive(event: string, data: string): void {
    if (!data.trim()) return
    const payload = JSON.parse(data)
    if (event === 'job') {
      jobs.value[payload.id] = payload
      lastJob.value = payload
    } else if (event === 'workers') {
      workers.value = payload
    } else if (event === 'dashboard') {
      dashboard.value = payload
      const queued = Object.values(payload.queue.queued_by_priority as Record<string, number>).reduce((a, b) => a + b, 0)
      push(history.value.requests, payload.requests_per_s ?? 0)
      push(history.value.tokens, payload.tokens_per_s ?? 0)
      push(history.value.queued, queued)
    } else if (event === 'resync') {
      resyncs.value += 1
    } else if (event === 'goodbye') {
      // the gateway ended the stream: the credentials no longer hold, or the role changed. Ask who we
      // are now: signed out with a notice, or back live with what the new role may see.
      error.value = payload.reason ?? 'the live stream ended'
      connected.value = false
      const auth = useAuth()
      void auth.recheck().then((still) => {
        if (still) connect()
      })
    }
  }

  function connect(): void {
    disconnect()
    controller = new AbortController()
    error.value = null
    stream('/api/v1/events', {
      signal: controller.signal,
      retry: true,
      onOpen: () => {
        connected.value = true
        error.value = null
      },
      onEvent: (message) => {
        if (message.event) receive(message.event, message.data)
      },
    }).catch((e: unknown) => {
      connected.value = false
      error.value = e instanceof Error ? e.message : 'the live stream stopped'
    })
  }

  function disconnect(): void {
    controller?.abort()
    controller = null
    connected.value = false
  }

  return { connected, error, jobs, lastJob, workers, dashboard, history, resyncs, receive, connect, disconnect }
})
