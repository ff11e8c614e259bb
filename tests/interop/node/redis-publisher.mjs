// A Node.js worker publishing to livepush channels through Redis, with nothing but ioredis and
// the Redis-level format of docs/protocol.md (the publish.lua script shipped with livepush).
// usage: node redis-publisher.mjs REDIS_URL PREFIX CHANNEL COUNT PUBLISH_LUA_PATH
import crypto from "node:crypto";
import fs from "node:fs";
import Redis from "ioredis";

const [redisUrl, prefix, channel, count, luaPath] = process.argv.slice(2);
const redis = new Redis(redisUrl);
const sha = await redis.script("LOAD", fs.readFileSync(luaPath, "utf8"));
const tag = `${prefix}:{${channel}}`;
const placed = [];
for (let n = 0; n < Number(count); n++) {
  const message = JSON.stringify({
    channel, type: "workflowUpdated", data: { n, from: "node" }, ts: Date.now() / 1000,
  });
  const [offset, epoch] = await redis.evalsha(
    sha, 2, `${tag}:m`, `${tag}:s`, tag, message,
    1000, 300000, 3600000, crypto.randomBytes(6).toString("hex"), "0",
  );
  placed.push({ offset, epoch });
}
// an ephemeral message: a plain PUBLISH, outside the stream
await redis.publish(tag, "::" + JSON.stringify({
  channel, type: "cursorMoved", data: { x: 1 }, ts: Date.now() / 1000, key: "cursor:node",
}));
console.log(JSON.stringify(placed));
redis.disconnect();
