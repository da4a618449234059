import { describe as suite, expect, it } from 'vitest'
import { ApiError, describe, fromResponse } from './errors'

suite('fromResponse', () => {
  it('reads the envelope message, type and code', () => {
    const error = fromResponse(409, { error: { message: 'model is loaded', type: 'conflict_error', code: 'conflict', param: null } })
    expect(error).toBeInstanceOf(ApiError)
    expect(error.message).toBe('model is loaded')
    expect([error.status, error.type, error.code]).toEqual([409, 'conflict_error', 'conflict'])
  })

  it('names the parameter when the message does not', () => {
    expect(fromResponse(422, { error: { message: 'must be at most 2', param: 'temperature' } }).message).toBe(
      'must be at most 2 (temperature)',
    )
    expect(fromResponse(422, { error: { message: 'temperature: too big', param: 'temperature' } }).message).toBe(
      'temperature: too big',
    )
  })

  it('never shows raw JSON or nothing: bodies without an envelope get a sentence', () => {
    for (const body of [null, 'Bad Gateway', { detail: 'x' }, { error: 'flat string' }, { error: { message: '' } }]) {
      const message = fromResponse(502, body).message
      expect(message).toMatch(/^[A-Z].*\.$/)
      expect(message).not.toContain('{')
    }
    expect(fromResponse(0, null).message).toContain('cannot be reached')
    expect(fromResponse(418, null).message).toBe('The request failed (HTTP 418).')
  })
})

suite('describe', () => {
  it('turns anything thrown into a sentence', () => {
    expect(describe(new ApiError('wrong username or password', 401))).toBe('wrong username or password')
    expect(describe(new TypeError('Failed to fetch'))).toContain('cannot be reached')
    expect(describe({})).toBe('Something went wrong.')
  })
})
