// Who is signed in: a login token (user name + password) or a pasted API key, kept for this browser
// tab only (sessionStorage), never in localStorage where every tab and extension could read it.
import { defineStore } from 'pinia'
import { computed, ref } from 'vue'
import { api, setCredential, unwrap, type Schemas } from '@/api/client'

const STORAGE_KEY = 'bitinglip.credential'

export const useAuth = defineStore('auth', () => {
  const me = ref<Schemas['Me'] | null>(null)
  const credential = ref<string | null>(null)
  const notice = ref<string | null>(null)
  const isAdmin = computed(() => me.value?.role === 'admin')
  const signedIn = computed(() => me.value !== null)

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
    } catch {
      signOut()
    }
  }

  function signOut(reason: string | null = null): void {
    setCredential(null)
    sessionStorage.removeItem(STORAGE_KEY)
    me.value = null
    credential.value = null
    notice.value = reason
  }

  return { me, credential, notice, isAdmin, signedIn, login, useKey, restore, signOut }
})
