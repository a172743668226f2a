// S3's real clients: `@electric-sql/client` ShapeStreams that join volt-bench's fan-out
// run at the same handle and offset as its Rust clients and report, on stdout, when each
// transaction (the rows' `batch` column) reached them:
//   `ready`                         every stream made its first request
//   `got <client> <batch> <wall ms>` a transaction's rows reached a client (wall clock)
// Usage: node fanout_clients.mjs <base url> <handle> <offset> <clients> <first batch> <batches>
import { ShapeStream } from '@electric-sql/client';

const [base, handle, offset, clients, firstBatch, batches] = process.argv.slice(2);
const [n, first, total] = [Number(clients), Number(firstBatch), Number(batches)];
const now = () => performance.timeOrigin + performance.now();

let finished = 0;
const controllers = [];
for (let c = 0; c < n; c++) {
  const controller = new AbortController();
  controllers.push(controller);
  const stream = new ShapeStream({
    url: `${base}/v1/shape`,
    params: { table: 'items' },
    handle,
    offset,
    signal: controller.signal,
  });
  let next = 0;
  stream.subscribe(
    (messages) => {
      const at = now();
      let last = -1;
      for (const m of messages) {
        const b = m.value?.batch;
        if (b !== undefined) last = Math.max(last, Number(b) - first);
      }
      for (; next <= last && next < total; next++) console.log(`got ${c} ${next} ${at.toFixed(3)}`);
      if (next >= total) {
        controller.abort();
        if (++finished === n) process.exit(0);
      }
    },
    (error) => console.error(`client ${c}: ${error}`),
  );
}
console.log('ready');
