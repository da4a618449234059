// Dark or light, remembered in localStorage; the first visit follows the system's preference.
import { defineStore } from 'pinia'
import { ref, watch } from 'vue'

export type Theme = 'light' | 'dark'
export const THEME_KEY = 'bitinglip.theme'
export const DARK_CLASS = 'app-dark'

function initial(): Theme {
  const saved = localStorage.getItem(THEME_KEY)
  if (saved === 'light' || saved === 'dark') return saved
  return globalThis.matchMedia?.('(prefers-color-scheme: dark)').matches ? 'dark' : 'light'
}

export const useTheme = defineStore('theme', () => {
  const theme = ref<Theme>(initial())

  function apply(value: Theme): void {
    document.documentElement.classList.toggle(DARK_CLASS, value === 'dark')
    document.documentElement.style.colorScheme = value
  }

  watch(
    theme,
    (value) => {
      localStorage.setItem(THEME_KEY, value)
      apply(value)
    },
    { immediate: true },
  )

  function toggle(): void {
    theme.value = theme.value === 'dark' ? 'light' : 'dark'
  }

  return { theme, toggle }
})
