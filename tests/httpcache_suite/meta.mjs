// Prints, as JSON, what the grader needs of the installed suite: every test the command-line
// client runs (id, kind, dependencies, whether browser-only) and the published peers' results.
// Run from this directory: node meta.mjs
import fs from 'fs'
import path from 'path'
import { fileURLToPath } from 'url'
import tests from 'http-cache-tests/tests/index.mjs'
import surrogate from 'http-cache-tests/tests/surrogate-control.mjs'
import peers from 'http-cache-tests/results/index.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))
const results = path.join(here, 'node_modules', 'http-cache-tests', 'results')
const suites = [...tests, surrogate] // cli.mjs runs the surrogate tests too
const out = { tests: [], peers: [] }
for (const suite of suites) {
  for (const test of suite.tests) {
    out.tests.push({
      id: test.id,
      suite: suite.id,
      name: test.name,
      kind: test.kind || 'required',
      depends_on: test.depends_on || [],
      browser_only: test.browser_only === true
    })
  }
}
for (const peer of peers) {
  out.peers.push({ ...peer, results: JSON.parse(fs.readFileSync(path.join(results, peer.file), 'utf8')) })
}
console.log(JSON.stringify(out))
