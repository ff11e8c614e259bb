// A minimal workflow editor for the browser tests: a canvas as a Yjs document synced with
// stock y-websocket through livepush's CRDT endpoint, and n8n's push messages (presence,
// cursors, the write lock) on its push endpoint. Bundled with esbuild by the test.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

window.startEditor = ({ server, token, workflowId, pushRef }) => {
  const doc = new Y.Doc()
  // disableBc: two tabs of one browser must not sync through BroadcastChannel, only livepush
  const provider = new WebsocketProvider(`${server.replace('http', 'ws')}/rest/crdt`, workflowId, doc, {
    params: { token },
    disableBc: true,
  })
  const nodes = doc.getMap('nodes')
  const editor = {
    doc,
    provider,
    nodes,
    pushed: [],
    synced: false,
    moveNode: (id, x, y) => nodes.set(id, { x, y }),
    canvas: () => nodes.toJSON(),
  }
  provider.on('sync', (synced) => { editor.synced = synced })
  const push = new WebSocket(
    `${server.replace('http', 'ws')}/rest/push?pushRef=${pushRef}&token=${encodeURIComponent(token)}`,
  )
  push.onmessage = (event) => editor.pushed.push(JSON.parse(event.data))
  push.onopen = () => push.send(JSON.stringify({ type: 'workflowOpened', workflowId }))
  editor.push = push
  editor.send = (message) => push.send(JSON.stringify(message))
  editor.moveCursor = (x, y) =>
    editor.send({ type: 'ephemeral', workflowId, kind: 'cursor', data: { x, y } })
  editor.collaborators = () => {
    const lists = editor.pushed.filter((m) => m.type === 'collaboratorsChanged')
    return lists.length ? lists[lists.length - 1].data.collaborators.map((c) => c.user.id) : null
  }
  editor.cursorsOf = (clientId) =>
    editor.pushed
      .filter((m) => m.type === 'collabEphemeral')
      .flatMap((m) => m.data.updates)
      .filter((u) => u.clientId === clientId)
      .map((u) => u.data)
  editor.types = () => editor.pushed.map((m) => m.type)
  editor.close = () => { provider.destroy(); doc.destroy(); push.close() }
  window.editor = editor
  return true
}

window.sameCanvas = (a, b) => {
  const keys = Object.keys(a)
  return keys.length === Object.keys(b).length &&
    keys.every((k) => b[k] && a[k].x === b[k].x && a[k].y === b[k].y)
}
