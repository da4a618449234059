// The installed models the caller may use, read once and refreshed on demand (pickers, Models page).
import { defineStore } from 'pinia'
import { computed, ref } from 'vue'
import { api, unwrap, type Schemas } from '@/api/client'

export type ModelView = Schemas['ModelView']

export const useModels = defineStore('models', () => {
  const models = ref<ModelView[]>([])
  const loaded = ref(false)

  async function refresh(): Promise<void> {
    models.value = (await unwrap(api.GET('/api/v1/models'))).data
    loaded.value = true
  }

  async function ensure(): Promise<void> {
    if (!loaded.value) await refresh()
  }

  /** Ready models of a task, warm ones (loaded on a worker) first: the pickers' default answers fastest. */
  const byTask = (task: string) =>
    computed(() =>
      models.value
        .filter((m) => m.task === task && m.status === 'ready')
        .sort((a, b) => Number(b.loaded_on.length > 0) - Number(a.loaded_on.length > 0) || a.name.localeCompare(b.name)),
    )

  return { models, loaded, refresh, ensure, byTask }
})
