// Server-sent events over fetch (EventSource cannot send an Authorization header): the live event
// stream and streamed chat completions both come through here.
import { fetchEventSource, type EventSourceMessage } from '@microsoft/fetch-event-source'
import { authHeaders, unauthorized } from './client'
import { fromResponse } from './errors'

export interface StreamOptions {
  method?: 'GET' | 'POST'
  body?: unknown
  signal: AbortSignal
  onEvent: (message: EventSourceMessage) => void
  onOpen?: () => void
  /** Reconnect (the live stream) or give up on the first failure (a chat reply). */
  retry: boolean
}

class Fatal extends Error {}

export async function stream(path: string, options: StreamOptions): Promise<void> {
  await fetchEventSource(path, {
    method: options.method ?? 'GET',
    headers: { ...authHeaders(), ...(options.body ? { 'Content-Type': 'application/json' } : {}) },
    body: options.body ? JSON.stringify(options.body) : undefined,
    signal: options.signal,
    openWhenHidden: true,
    async onopen(response) {
      if (response.ok && response.headers.get('content-type')?.startsWith('text/event-stream')) {
        options.onOpen?.()
        return
      }
      const body = await response.json().catch(() => null)
      if (response.status === 401) unauthorized()
      throw fromResponse(response.status, body)
    },
    onmessage: options.onEvent,
    onerror(error) {
      if (!options.retry || error instanceof Fatal || (error as { status?: number }).status === 401) throw error
      return 2000 // reconnect after 2 s
    },
  })
}
