// The Vercel AI SDK's default OpenAI provider against the proxy: `openai(model)` is the Responses API.
// Usage: node ai_sdk.mjs <proxy base url ending in /v1> <marker>
// Prints one JSON object: each scenario's result and the requests the provider sent (method, path, body).
import { createOpenAI } from "@ai-sdk/openai";
import { generateObject, generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const [baseURL, mark] = process.argv.slice(2);
if (!baseURL || !mark) {
  console.error("usage: node ai_sdk.mjs <base_url> <marker>");
  process.exit(2);
}

const requests = [];
async function recordingFetch(url, init) {
  requests.push({
    method: init?.method ?? "GET",
    path: new URL(url).pathname,
    body: typeof init?.body === "string" ? JSON.parse(init.body) : null,
  });
  return fetch(url, init);
}

const openai = createOpenAI({ baseURL, apiKey: "k", fetch: recordingFetch });
const model = openai("claude-2.1");

function script(...turns) {
  return `[[mock:script=${JSON.stringify(turns)} ]]`;
}

const seen = [];
const weather = tool({
  description: "Current weather for a city.",
  inputSchema: z.object({ city: z.string().describe("City name") }),
  execute: async ({ city }) => {
    seen.push(city);
    return { city, temperature: "19 C" };
  },
});

const out = { provider: model.provider, specificationVersion: model.specificationVersion };

function steps(list) {
  return list.map((step) => ({
    finishReason: step.finishReason,
    text: step.text,
    toolCalls: step.toolCalls.map((c) => ({ toolName: c.toolName, input: c.input })),
    toolResults: step.toolResults.map((r) => ({ toolName: r.toolName, output: r.output })),
  }));
}

async function scenario(name, run) {
  const start = requests.length;
  try {
    out[name] = await run();
  } catch (error) {
    out[name] = { error: String(error?.stack ?? error) };
  }
  out[name].requests = requests.slice(start);
}

await scenario("generateText", async () => {
  const result = await generateText({ model, system: "Be brief.", prompt: `Hello ${mark} generate` });
  return { text: result.text, finishReason: result.finishReason, usage: result.usage, id: result.response.id };
});

await scenario("streamText", async () => {
  const result = streamText({ model, prompt: `Hello ${mark} stream` });
  const deltas = [];
  for await (const delta of result.textStream) deltas.push(delta);
  return { deltas, text: await result.text, finishReason: await result.finishReason, usage: await result.usage };
});

await scenario("toolCall", async () => {
  const result = await generateText({
    model,
    system: "Use the tools. " + script({ calls: [{ name: "weather", arguments: { city: "Paris" } }] }, { text: "Paris: 19 C." }),
    prompt: `Weather in Paris? ${mark} tool`,
    tools: { weather },
    stopWhen: stepCountIs(5),
  });
  return { text: result.text, finishReason: result.finishReason, seen: [...seen], steps: steps(result.steps) };
});

await scenario("streamToolCall", async () => {
  const parts = [];
  const result = streamText({
    model,
    system: "Use the tools. " + script({ text: "Checking.", calls: [{ name: "weather", arguments: { city: "Nice" } }] }, { text: "Nice: 19 C." }),
    prompt: `Weather in Nice? ${mark} streamtool`,
    tools: { weather },
    stopWhen: stepCountIs(5),
  });
  for await (const part of result.fullStream) {
    if (part.type === "error") parts.push(`error: ${part.error}`);
    else parts.push(part.type);
  }
  return { text: await result.text, finishReason: await result.finishReason, parts, seen: [...seen], steps: steps(await result.steps) };
});

await scenario("generateObject", async () => {
  const result = await generateObject({
    model,
    system: "Answer as JSON. " + script({ json: { city: "Lyon", celsius: 17 } }),
    prompt: `Weather in Lyon? ${mark} object`,
    schema: z.object({ city: z.string(), celsius: z.number().int() }),
  });
  return { object: result.object, finishReason: result.finishReason };
});

console.log(JSON.stringify(out));
