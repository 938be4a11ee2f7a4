// Type-checks Grafana dashboards against board.ts (Grafana's published schema) with
// `tsc --noEmit`. Usage: node check.mjs [dashboard.json ...]; with no argument, every
// dashboard in ../dashboards. Exits 0 when all type-check, 1 otherwise (or 2 when a
// file is not JSON), printing tsc's errors with the dashboard's own line numbers.
//
// Each dashboard is embedded as an object literal, `(<json>) satisfies Checked`.
// Importing the .json file instead (resolveJsonModule) would let unknown keys through:
// TypeScript checks excess properties only on object literals.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const dashboards = join(here, '..', 'dashboards');
const files = process.argv.length > 2
  ? process.argv.slice(2).map((f) => resolve(f))
  : readdirSync(dashboards).filter((f) => f.endsWith('.json')).sort().map((f) => join(dashboards, f));
if (files.length === 0) {
  console.error(`no dashboard to check in ${dashboards}`);
  process.exit(2);
}

// The JSON starts on this line of the generated file, so line L there is line
// L - OFFSET of the dashboard.
const OFFSET = 3;
const build = mkdtempSync(join(here, '.build-'));
try {
  const sources = new Map();
  files.forEach((file, i) => {
    const text = readFileSync(file, 'utf8');
    try {
      JSON.parse(text);
    } catch (err) {
      console.error(`${file}: not JSON: ${err.message}`);
      process.exit(2);
    }
    const name = `dashboard${i}.ts`;
    sources.set(name, file);
    writeFileSync(
      join(build, name),
      `import type { Checked } from '../board';\n\nexport const dashboard = (\n${text.trim()}\n) satisfies Checked;\n`,
    );
  });
  writeFileSync(
    join(build, 'tsconfig.json'),
    JSON.stringify({ extends: '../tsconfig.json', include: ['*.ts'] }),
  );
  const tsc = join(here, 'node_modules', 'typescript', 'bin', 'tsc');
  const run = spawnSync(process.execPath, [tsc, '--noEmit', '--pretty', 'false', '-p', build], {
    encoding: 'utf8',
  });
  const output = `${run.stdout}${run.stderr}`.replace(
    /(?:[^\s(]*\/)?(dashboard\d+\.ts)\((\d+),(\d+)\)/g,
    (_, name, line, col) => `${sources.get(name)}(${Number(line) - OFFSET},${col})`,
  );
  process.stdout.write(output);
  if (run.status === 0) {
    console.log(`type-checked ${files.map((f) => basename(f)).join(', ')}: no errors`);
  }
  process.exitCode = run.status === 0 ? 0 : 1;
} finally {
  rmSync(build, { recursive: true, force: true });
}
