// Every failure the console shows goes through here: the gateway's one error envelope
// ({"error": {"message", "type", "param", "code"}}) becomes a sentence, never raw JSON or a blank page.

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly type: string | null = null,
    readonly code: string | null = null,
    readonly param: string | null = null,
  ) {
    super(message)
    this.name = 'ApiError'
  }
}

const FALLBACK: Record<number, string> = {
  0: 'The gateway cannot be reached. Is the platform running?',
  401: 'You are not signed in, or your session has expired.',
  403: 'This is for admins only.',
  404: 'Not found.',
  409: 'This conflicts with the current state; reload and try again.',
  413: 'That is too large for the gateway.',
  429: 'Too many requests or over a quota; try again shortly.',
  500: 'The gateway had an internal error; its logs have the details.',
  502: 'The gateway could not reach a worker.',
  503: 'The platform is busy or starting; try again shortly.',
}

interface Envelope {
  error?: { message?: unknown; type?: unknown; code?: unknown; param?: unknown }
}

function text(value: unknown): string | null {
  return typeof value === 'string' && value.trim() ? value : null
}

/** An ApiError from a status and whatever body came back (parsed JSON, text, or nothing). */
export function fromResponse(status: number, body: unknown): ApiError {
  const error = (body && typeof body === 'object' ? (body as Envelope).error : undefined) ?? undefined
  const message =
    text(error?.message) ?? FALLBACK[status] ?? (status >= 500 ? FALLBACK[500] : `The request failed (HTTP ${status}).`)
  const param = text(error?.param)
  const shown = param && !message.includes(param) ? `${message} (${param})` : message
  return new ApiError(shown, status, text(error?.type), text(error?.code), param)
}

/** A readable sentence for anything thrown. */
export function describe(error: unknown): string {
  if (error instanceof ApiError) return error.message
  if (error instanceof TypeError) return FALLBACK[0]
  if (error instanceof Error && error.message) return error.message
  return 'Something went wrong.'
}
