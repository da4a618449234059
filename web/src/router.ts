import { createRouter, createWebHistory, type RouteRecordRaw } from 'vue-router'
import { useAuth } from './stores/auth'

export const pages: (RouteRecordRaw & { meta: { title: string; icon: string; admin?: boolean } })[] = [
  { path: '/', name: 'dashboard', component: () => import('./views/DashboardView.vue'), meta: { title: 'Dashboard', icon: 'pi pi-chart-line' } },
  { path: '/playground', name: 'playground', component: () => import('./views/PlaygroundView.vue'), meta: { title: 'Playground', icon: 'pi pi-comments' } },
  { path: '/jobs', name: 'jobs', component: () => import('./views/JobsView.vue'), meta: { title: 'Jobs', icon: 'pi pi-list' } },
  { path: '/batches', name: 'batches', component: () => import('./views/BatchesView.vue'), meta: { title: 'Batches', icon: 'pi pi-table' } },
  { path: '/models', name: 'models', component: () => import('./views/ModelsView.vue'), meta: { title: 'Models', icon: 'pi pi-box' } },
  { path: '/workers', name: 'workers', component: () => import('./views/WorkersView.vue'), meta: { title: 'Workers', icon: 'pi pi-server', admin: true } },
  { path: '/keys', name: 'keys', component: () => import('./views/KeysView.vue'), meta: { title: 'Keys & usage', icon: 'pi pi-key' } },
]

export const router = createRouter({
  history: createWebHistory('/ui/'),
  routes: [
    ...pages,
    { path: '/jobs/:id', name: 'job', component: () => import('./views/JobDetailView.vue'), meta: { title: 'Job' } },
    { path: '/login', name: 'login', component: () => import('./views/LoginView.vue'), meta: { title: 'Sign in', open: true } },
    { path: '/:rest(.*)*', name: 'missing', component: () => import('./views/MissingView.vue'), meta: { title: 'Not found' } },
  ],
})

router.beforeEach(async (to) => {
  const auth = useAuth()
  await auth.restore()
  if (to.meta.open) return auth.signedIn && to.name === 'login' ? { name: 'dashboard' } : true
  if (!auth.signedIn) return { name: 'login', query: to.fullPath !== '/' ? { next: to.fullPath } : {} }
  if (to.meta.admin && !auth.isAdmin) return { name: 'dashboard' }
  return true
})

router.afterEach((to) => {
  document.title = `${String(to.meta.title ?? 'Console')} · BitingLip`
})
