// What a console.log costs this runtime (bench/README.md, "What logging
// costs"): each request writes `?n=` copies of a `publish` line, from the
// worker itself or (`?k=do`) from a Durable Object it calls; `?k=later`
// has the object keep them and write them a second later, in one
// invocation for many requests.
import { DurableObject } from "cloudflare:workers";

const LINE = '{"event":"publish","userId":"user-123456","envelopeId":"3f1c2a7e-5e4e-4323-82f7-54a563938ebc","type":"chat","clientCount":2,"acked":2,"timedOut":0,"closed":0,"ms":3,"bytes":17,"keyed":false,"replayed":false}';

let kept = [];
let timer = null;

export class Logger extends DurableObject {
  now(n) {
    for (let i = 0; i < n; i++) console.log(LINE);
    return "ok";
  }

  later(n) {
    for (let i = 0; i < n; i++) kept.push(LINE);
    if (!timer && kept.length) {
      timer = setTimeout(() => {
        timer = null;
        const lines = kept;
        kept = [];
        for (const line of lines) console.log(line);
      }, 1000);
    }
    return "ok";
  }
}

export default {
  async fetch(request, env) {
    const url = new URL(request.url);
    const n = Number(url.searchParams.get("n"));
    const where = url.searchParams.get("k");
    if (where == "do") await env.LOGGER.getByName("a").now(n);
    else if (where == "later") await env.LOGGER.getByName("a").later(n);
    else for (let i = 0; i < n; i++) console.log(LINE);
    return new Response("ok");
  },
};
