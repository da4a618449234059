// The typed API client: paths and shapes come from the gateway's OpenAPI schema (schema.d.ts is
// generated from web/openapi.json by `npm run schema`; a test keeps both current).
import createClient, { type Middleware } from 'openapi-fetch'
import { ApiError, fromResponse } from './errors'
import type { components, paths } from './schema'

export type Schemas = components['schemas']

let credential: string | null = null
let onUnauthorized: (() => void) | null = null

/** The bearer credential (a login token or an API key) every request carries from now on. */
export function setCredential(value: string | null): void {
  credential = value
}

export function authHeaders(): Record<string, string> {
  return credential ? { Authorization: `Bearer ${credential}` } : {}
}

/** Called when a signed-in request comes back 401 (the token expired or the key was revoked). */
export function whenUnauthorized(handler: () => void): void {
  onUnauthorized = handler
}

/** A request made with the current credential was refused as unauthenticated: tell the handler. */
export function unauthorized(): void {
  if (credential && onUnauthorized) onUnauthorized()
}

const auth: Middleware = {
  onRequest({ request }) {
    if (credential) request.headers.set('Authorization', `Bearer ${credential}`)
    return request
  },
}

// fetch is looked up per call (not captured at import), so the unit tests' stand-in is the one used
export const api = createClient<paths>({
  baseUrl: globalThis.location?.origin ?? '',
  fetch: (request: Request) => globalThis.fetch(request),
})
api.use(auth)

interface Answer<T> {
  data?: T
  error?: unknown
  response: Response
}

/** The data of a successful answer; otherwise an ApiError with the envelope's message. */
export async function unwrap<T>(pending: Promise<Answer<T>>): Promise<T> {
  let answer: Answer<T>
  try {
    answer = await pending
  } catch (error) {
    throw error instanceof ApiError ? error : fromResponse(0, null)
  }
  if (answer.response.ok) return answer.data as T
  if (answer.response.status === 401) unauthorized()
  throw fromResponse(answer.response.status, answer.error)
}

/** For what openapi-fetch does not cover (multipart uploads, downloads): fetch with the credential. */
export async function raw(path: string, init: RequestInit = {}): Promise<Response> {
  let response: Response
  try {
    response = await fetch(path, { ...init, headers: { ...authHeaders(), ...(init.headers ?? {}) } })
  } catch {
    throw fromResponse(0, null)
  }
  if (!response.ok) {
    const body = await response.json().catch(() => null)
    if (response.status === 401) unauthorized()
    throw fromResponse(response.status, body)
  }
  return response
}
