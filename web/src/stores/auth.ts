// Who is signed in: a login token (user name + password) or a pasted API key, kept for this browser
// tab only (sessionStorage), never in localStorage where every tab and extension could read it.
// A session ends visibly: when a login token's expiry comes, or when the gateway refuses the
// credential (an expired token, a revoked key, a disabled user), the user is signed out with a notice
// the sign-in page shows (App.vue takes them there).
import { defineStore } from 'pinia'
import { computed, ref } from 'vue'
import { api, setCredential, unwrap, type Schemas } from '@/api/client'
import { ApiError } from '@/api/errors'

const STORAGE_KEY = 'bitinglip.credential'
export const ENDED = 'Your session has ended: it expired, or its key was revoked or its user disabled. Sign in again.'

/** When a login token expires (its `exp` claim, in ms); null for an API key or anything unreadable. */
export function tokenExpiry(credential: string): number | null {
  const parts = credential.split('.')
  if (parts.length !== 3) return null
  try {
    const payload = JSON.parse(atob(parts[1].replace(/-/g, '+').replace(/_/g, '/'))) as { exp?: unknown }
    return typeof payload.exp === 'number' ? payload.exp * 1000 : null
  } catch {
    return null
  }
}

export const useAuth = defineStore('auth', () => {
  const me = ref<Schemas['Me'] | null>(null)
  const credential = ref<string | null>(null)
  const notice = ref<string | null>(null)
  const isAdmin = computed(() => me.value?.role === 'admin')
  const signedIn = computed(() => me.value !== null)
  let expiryTimer: ReturnType<typeof setTimeout> | undefined

  function watchExpiry(value: string): void {
    clearTimeout(expiryTimer)
    const expires = tokenExpiry(value)
    if (expires === null) return
    const at = new Date(expires).toLocaleTimeString()
    // setTimeout holds at most ~24.8 days; a login token lives minutes
    expiryTimer = setTimeout(() => signOut(`Your session expired at ${at}. Sign in again.`), Math.max(0, expires - Date.now()))
  }

  async function adopt(value: string): Promise<void> {
    setCredential(value)
    try {
      me.value = await unwrap(api.GET('/api/v1/auth/me'))
    } catch (error) {
      setCredential(null)
      throw error
    }
    credential.value = value
    sessionStorage.setItem(STORAGE_KEY, value)
    notice.value = null
    watchExpiry(value)
  }

  async function login(username: string, password: string): Promise<void> {
    const token = await unwrap(api.POST('/api/v1/auth/login', { body: { username, password } }))
    await adopt(token.access_token)
  }

  async function useKey(key: string): Promise<void> {
    await adopt(key.trim())
  }

  /** Back to a signed-in state after a reload, if this tab still holds a credential that works. */
  async function restore(): Promise<void> {
    const saved = sessionStorage.getItem(STORAGE_KEY)
    if (!saved || me.value) return
    try {
      await adopt(saved)
    } catch (error) {
      signOut(error instanceof ApiError && error.status === 401 ? ENDED : null)
    }
  }

  /** Ask the gateway who we are now (the live stream said the credentials changed): true while still
   * signed in, with the role as it is now; a refusal signs out (through the 401 handler). */
  async function recheck(): Promise<boolean> {
    if (!credential.value) return false
    try {
      me.value = await unwrap(api.GET('/api/v1/auth/me'))
      return true
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) signOut(ENDED)
      return signedIn.value
    }
  }

  function signOut(reason: string | null = null): void {
    clearTimeout(expiryTimer)
    setCredential(null)
    sessionStorage.removeItem(STORAGE_KEY)
    me.value = null
    credential.value = null
    notice.value = reason
  }

  return { me, credential, notice, isAdmin, signedIn, login, useKey, restore, recheck, signOut }
})
