import { createPinia, setActivePinia } from 'pinia'
import { beforeEach, describe, expect, it } from 'vitest'
import { nextTick } from 'vue'
import { DARK_CLASS, THEME_KEY, useTheme } from './theme'

describe('theme store', () => {
  beforeEach(() => {
    localStorage.clear()
    document.documentElement.className = ''
    setActivePinia(createPinia())
  })

  it('toggles, applies the class and remembers the choice', async () => {
    const theme = useTheme()
    expect(theme.theme).toBe('light') // jsdom prefers no dark scheme
    theme.toggle()
    await nextTick()
    expect(document.documentElement.classList.contains(DARK_CLASS)).toBe(true)
    expect(localStorage.getItem(THEME_KEY)).toBe('dark')
  })

  it('starts from the remembered choice', () => {
    localStorage.setItem(THEME_KEY, 'dark')
    expect(useTheme().theme).toBe('dark')
    expect(document.documentElement.classList.contains(DARK_CLASS)).toBe(true)
  })

  it('ignores a tampered stored value', () => {
    localStorage.setItem(THEME_KEY, '<script>')
    expect(useTheme().theme).toBe('light')
  })
})
