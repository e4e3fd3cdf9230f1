// Kimi-VL playground: streamed chat with images and videos against this server's OpenAI API.
// Plain JS, no build step, no third-party code. Model output is only ever set as textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_NAME = "kimi-vl-api-key";
// Parameters the openai SDK's chat.completions.create() takes; the rest go in extra_body.
const SDK_PARAMS = new Set([
  "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
  "temperature", "top_p", "n", "stop", "seed", "presence_penalty", "frequency_penalty",
  "logit_bias", "logprobs", "top_logprobs", "response_format", "tools", "tool_choice", "user",
  "parallel_tool_calls", "metadata", "store", "service_tier", "reasoning_effort",
]);

const state = {
  history: [],      // messages sent so far (user turns with their media, assistant answers)
  attachments: [],  // {kind: "image" | "video", name, url, detail}
  controller: null, // AbortController of the request in flight
  lastBody: null,   // the last request body, for the copy buttons
  epoch: 0,         // bumped by "Clear conversation": answers to older requests are dropped
  keyRequired: false,
};

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function setStatus(text, bad = false) {
  $("status").textContent = text;
  $("status").classList.toggle("bad", bad);
}

// -- API key -------------------------------------------------------------------------------

function apiKey() {
  return $("api-key").value.trim();
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: "Bearer " + key } : {};
}

function storeKey() {
  const remember = $("remember-key").checked;
  localStorage.removeItem(KEY_NAME);
  sessionStorage.removeItem(KEY_NAME);
  if (apiKey()) (remember ? localStorage : sessionStorage).setItem(KEY_NAME, apiKey());
}

// -- errors ------------------------------------------------------------------------------------

async function errorOf(response) {
  let error = { message: `HTTP ${response.status} ${response.statusText}`.trim() };
  try {
    const body = await response.json();
    if (body && typeof body.error === "object") error = body.error;
  } catch (_) {
    // not JSON: keep the status line
  }
  return { ...error, status: response.status };
}

// -- models --------------------------------------------------------------------------------------

async function loadModels() {
  const response = await fetch("/v1/models", { headers: authHeaders() });
  if (!response.ok) {
    const error = await errorOf(response);
    setStatus(`Models: ${error.message}${error.code ? ` (${error.code})` : ""}`, true);
    return;
  }
  const select = $("model");
  const previous = select.value;
  const names = (await response.json()).data.map((model) => model.id);
  select.replaceChildren(...names.map((name) => el("option", { value: name, text: name })));
  if (names.includes(previous)) select.value = previous;
  setStatus("");
}

// -- attachments ---------------------------------------------------------------------------------

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// Files are read one batch after another, so attachments keep the order they were added in.
let adding = Promise.resolve();

function addFiles(files) {
  adding = adding.then(() => readFiles(files)).catch((err) => setStatus(`Could not read a file: ${err.message}`, true));
  return adding;
}

async function readFiles(files) {
  for (const file of files) {
    const kind = file.type.startsWith("image/") ? "image" : file.type.startsWith("video/") ? "video" : null;
    if (!kind) {
      setStatus(`${file.name}: not an image or a video`, true);
      continue;
    }
    const url = await readAsDataURL(file);
    state.attachments.push({ kind, name: file.name || `pasted ${kind}`, url, detail: "auto" });
  }
  renderAttachments();
}

function thumbnail(item) {
  return item.kind === "image"
    ? el("img", { src: item.url, alt: item.name })
    : el("video", { src: item.url, muted: "", preload: "metadata", "aria-label": item.name });
}

function renderAttachments() {
  const box = $("attachments");
  box.replaceChildren();
  state.attachments.forEach((item, index) => {
    const chip = el("div", { class: "chip" }, thumbnail(item), el("span", { class: "name", text: item.name }));
    if (item.kind === "image") {
      const id = `detail-${index}`;
      const select = el("select", { id });
      for (const level of ["auto", "low", "high"]) select.append(el("option", { value: level, text: level }));
      select.value = item.detail;
      select.addEventListener("change", () => { item.detail = select.value; });
      chip.append(el("label", { for: id, text: "Detail" }), select);
    }
    const remove = el("button", { type: "button", "aria-label": `Remove ${item.name}`, text: "Remove" });
    remove.addEventListener("click", () => {
      state.attachments.splice(index, 1);
      renderAttachments();
    });
    chip.append(remove);
    box.append(chip);
  });
}

// -- request -------------------------------------------------------------------------------------

function userContent(text, attachments) {
  if (!attachments.length) return text;
  const parts = attachments.map((item) => {
    if (item.kind === "video") return { type: "video_url", video_url: { url: item.url } };
    const image = { url: item.url };
    if (item.detail !== "auto") image.detail = item.detail;
    return { type: "image_url", image_url: image };
  });
  if (text) parts.push({ type: "text", text });
  return parts;
}

function hasVideo(messages) {
  return messages.some((m) => Array.isArray(m.content) && m.content.some((p) => p.type === "video_url"));
}

function number(id) {
  const raw = $(id).value.trim();
  return raw === "" ? undefined : Number(raw);
}

// The body for `messages` (the conversation so far plus the new turn); throws on bad extra JSON.
function requestBody(messages) {
  const body = {};
  if ($("model").value) body.model = $("model").value;
  const system = $("system").value.trim();
  body.messages = system ? [{ role: "system", content: system }, ...messages] : messages;
  body.stream = true;
  body.stream_options = { include_usage: true };
  const temperature = number("temperature");
  const maxTokens = number("max-tokens");
  if (temperature !== undefined) body.temperature = temperature;
  if (maxTokens !== undefined) body.max_tokens = maxTokens;
  if (hasVideo(messages)) {
    const video = {};
    const fps = number("video-fps");
    const frames = number("video-frames");
    if (fps !== undefined) video.fps = fps;
    if (frames !== undefined) video.max_frames = frames;
    if (Object.keys(video).length) body.video = video;
  }
  const extra = $("extra").value.trim();
  if (extra) {
    let parsed;
    try {
      parsed = JSON.parse(extra);
    } catch (err) {
      throw new Error(`Extra JSON: ${err.message}`);
    }
    if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw new Error("Extra JSON must be an object");
    }
    Object.assign(body, parsed);
  }
  return body;
}

// -- conversation view ---------------------------------------------------------------------------

function scrollDown() {
  const box = $("conversation");
  box.scrollTop = box.scrollHeight;
}

function showUser(text, attachments) {
  $("empty").hidden = true;
  const node = el("article", { class: "msg user" }, el("div", { class: "role", text: "You" }));
  if (attachments.length) node.append(el("div", { class: "media" }, ...attachments.map(thumbnail)));
  if (text) node.append(el("div", { class: "text", text }));
  $("conversation").append(node);
  scrollDown();
  return node;
}

// One assistant answer: reasoning (collapsible, only when there is some), answer, error, stats.
// Streamed text is buffered and added once per animation frame (appended as text nodes), so a
// fast stream costs one layout per frame, not one per token.
function showAssistant() {
  const reasoningText = el("div", { class: "reasoning-text" });
  const reasoning = el("details", { class: "reasoning", open: "" }, el("summary", { text: "Reasoning" }), reasoningText);
  reasoning.hidden = true;
  const answer = el("div", { class: "answer" });
  const error = el("div", { class: "error", role: "alert" });
  error.hidden = true;
  const stats = el("div", { class: "stats" });
  const node = el("article", { class: "msg assistant" }, el("div", { class: "role", text: "Assistant" }), reasoning, answer, error, stats);
  $("conversation").append(node);
  scrollDown();
  const pending = { reasoning: "", answer: "" };
  let scheduled = false;
  let collapsed = false;
  const flush = () => {
    if (!scheduled) return;
    scheduled = false;
    const box = $("conversation");
    const following = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
    if (pending.reasoning) {
      reasoning.hidden = false;
      reasoningText.append(pending.reasoning);
    }
    if (pending.answer) {
      if (!collapsed) reasoning.open = false; // the answer began: fold the reasoning once
      collapsed = true;
      answer.append(pending.answer);
    }
    pending.reasoning = pending.answer = "";
    if (following) scrollDown();
  };
  const add = (part, text) => {
    pending[part] += text;
    if (!scheduled) {
      scheduled = true;
      requestAnimationFrame(flush);
      setTimeout(flush, 100); // frames can be scarce (busy machine, hidden tab): text still flows
    }
  };
  return {
    addReasoning: (text) => add("reasoning", text),
    addAnswer: (text) => add("answer", text),
    answer: () => answer.textContent + pending.answer,
    showError(err) {
      flush();
      error.hidden = false;
      const prefix = err.status ? `HTTP ${err.status}` : "Error";
      error.replaceChildren(
        el("span", { class: "error-code", text: err.code ? `${prefix} · ${err.code}` : prefix }),
        el("span", { class: "error-message", text: err.message || "unknown error" }),
      );
      scrollDown();
    },
    finish(text) {
      flush();
      stats.textContent = text;
    },
  };
}

function statsLine({ usage, started, first, last, stopped, finish }) {
  const parts = [];
  if (stopped) parts.push("stopped");
  else if (finish && finish !== "stop") parts.push(`finish: ${finish}`);
  if (usage) parts.push(`prompt ${usage.prompt_tokens} tok`, `completion ${usage.completion_tokens} tok`);
  if (first !== null) parts.push(`TTFT ${Math.round(first - started)} ms`);
  if (usage && first !== null && last > first && usage.completion_tokens > 1) {
    parts.push(`${((usage.completion_tokens - 1) / ((last - first) / 1000)).toFixed(1)} tok/s`);
  }
  return parts.join(" · ");
}

// -- streaming -----------------------------------------------------------------------------------

// Yields the JSON payload of every `data:` event of an SSE body, until [DONE].
async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = event.split("\n").filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart()).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

// Sends `body`, streams the answer into `view`; returns the answer text or null on failure.
async function stream(body, view) {
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  const run = { usage: null, started: performance.now(), first: null, last: null, stopped: false, finish: null };
  let failed = false;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    if (!response.ok) {
      view.showError(await errorOf(response));
      return null;
    }
    for await (const chunk of sseEvents(response.body)) {
      if (chunk.error) {
        view.showError(chunk.error);
        failed = true;
        continue;
      }
      if (chunk.usage) run.usage = chunk.usage;
      const choice = (chunk.choices || []).find((c) => c.index === 0);
      if (!choice) continue;
      const delta = choice.delta || {};
      if (delta.reasoning_content || delta.content) {
        run.last = performance.now();
        if (run.first === null) run.first = run.last;
      }
      if (delta.reasoning_content) view.addReasoning(delta.reasoning_content);
      if (delta.content) view.addAnswer(delta.content);
      if (choice.finish_reason) run.finish = choice.finish_reason;
    }
  } catch (err) {
    if (err.name === "AbortError") run.stopped = true;
    else {
      view.showError({ message: String(err.message || err) });
      failed = true;
    }
  } finally {
    state.controller = null;
    setBusy(false);
    view.finish(statsLine(run));
  }
  return failed && !view.answer() ? null : view.answer();
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  setStatus(busy ? "Generating…" : "");
}

async function send() {
  await adding; // files still being read go with this message
  if (state.controller) return;
  const text = $("prompt").value.trim();
  const attachments = state.attachments;
  if (!text && !attachments.length) return;
  const turn = { role: "user", content: userContent(text, attachments) };
  let body;
  try {
    body = requestBody([...state.history, turn]);
  } catch (err) {
    setStatus(err.message, true);
    return;
  }
  const userNode = showUser(text, attachments);
  $("prompt").value = "";
  state.attachments = [];
  renderAttachments();
  state.lastBody = body;
  $("copy-curl").disabled = $("copy-python").disabled = false;
  const epoch = state.epoch;
  const answer = await stream(body, showAssistant());
  if (epoch !== state.epoch) return;
  if (answer === null || answer === "") {
    userNode.classList.add("failed"); // not part of the conversation the next request sends
    return;
  }
  state.history.push(turn, { role: "assistant", content: answer });
}

function clearConversation() {
  if (state.controller) state.controller.abort();
  state.epoch += 1;
  state.history = [];
  $("conversation").replaceChildren($("empty"));
  $("empty").hidden = false;
  setStatus("");
}

// -- copy as code ----------------------------------------------------------------------------------

function curlSnippet(body) {
  const auth = apiKey() ? ` \\\n  -H "Authorization: Bearer $KIMI_VL_API_KEY"` : "";
  return `curl -sN ${location.origin}/v1/chat/completions \\\n  -H 'Content-Type: application/json'${auth} \\\n  -d @- <<'JSON'\n${JSON.stringify(body, null, 2)}\nJSON\n`;
}

// A JSON value as a Python literal (JSON strings and numbers are valid Python literals).
function py(value, indent) {
  if (value === null) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value !== "object") return JSON.stringify(value);
  const inner = indent + "    ";
  const items = Array.isArray(value)
    ? value.map((v) => inner + py(v, inner))
    : Object.entries(value).map(([k, v]) => `${inner}${JSON.stringify(k)}: ${py(v, inner)}`);
  const [open, close] = Array.isArray(value) ? ["[", "]"] : ["{", "}"];
  return items.length ? `${open}\n${items.join(",\n")},\n${indent}${close}` : open + close;
}

function pythonSnippet(body) {
  const args = [];
  const extra = {};
  for (const [name, value] of Object.entries(body)) {
    if (SDK_PARAMS.has(name)) args.push(`    ${name}=${py(value, "    ")},`);
    else extra[name] = value;
  }
  if (Object.keys(extra).length) args.push(`    extra_body=${py(extra, "    ")},`);
  return [
    "import os",
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${JSON.stringify(location.origin + "/v1")}, api_key=os.environ.get("KIMI_VL_API_KEY", "none"))`,
    "stream = client.chat.completions.create(",
    ...args,
    ")",
    "for chunk in stream:",
    "    if chunk.choices:",
    "        delta = chunk.choices[0].delta",
    "        print(getattr(delta, \"reasoning_content\", None) or delta.content or \"\", end=\"\", flush=True)",
    "    elif chunk.usage:",
    "        print(\"\\n\", chunk.usage)",
    "",
  ].join("\n");
}

function copySnippet(make, what) {
  if (!state.lastBody) return;
  const text = make(state.lastBody);
  const box = $("snippet");
  box.hidden = false;
  box.value = text;
  const copied = navigator.clipboard ? navigator.clipboard.writeText(text) : Promise.reject(new Error("no clipboard"));
  copied.then(
    () => setStatus(`Copied the last request as ${what}.`),
    () => {
      box.select();
      setStatus(`The ${what} code is below: copy it from there.`);
    },
  );
}

// -- start-up ------------------------------------------------------------------------------------

function wire() {
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("clear").addEventListener("click", clearConversation);
  $("files").addEventListener("change", async (event) => {
    await addFiles([...event.target.files]);
    event.target.value = "";
  });
  document.addEventListener("paste", (event) => {
    const files = event.clipboardData ? [...event.clipboardData.files] : [];
    if (files.length) {
      event.preventDefault();
      addFiles(files);
    }
  });
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) document.body.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    document.body.classList.remove("dragging");
    if (event.dataTransfer) addFiles([...event.dataTransfer.files]);
  });
  $("api-key").addEventListener("change", () => {
    storeKey();
    if (apiKey() || !state.keyRequired) loadModels();
    else askForKey();
  });
  $("remember-key").addEventListener("change", storeKey);
  $("copy-curl").addEventListener("click", () => copySnippet(curlSnippet, "curl"));
  $("copy-python").addEventListener("click", () => copySnippet(pythonSnippet, "Python"));
}

function askForKey() {
  $("model").replaceChildren();
  setStatus("This server needs an API key: enter it on the left.");
}

async function start() {
  wire();
  const remembered = localStorage.getItem(KEY_NAME);
  $("api-key").value = remembered || sessionStorage.getItem(KEY_NAME) || "";
  $("remember-key").checked = remembered !== null;
  const config = await (await fetch("/ui/config")).json();
  $("video-fps").placeholder = String(config.video.fps);
  $("video-fps").max = String(config.video.max_fps);
  $("video-frames").placeholder = String(config.video.max_frames);
  $("video-frames").max = String(config.video.max_frames);
  state.keyRequired = config.api_key_required;
  $("key-box").hidden = !state.keyRequired;
  if (state.keyRequired && !apiKey()) {
    askForKey();
    $("api-key").focus();
  } else {
    await loadModels();
    $("prompt").focus();
  }
  document.body.dataset.state = "ready"; // for the browser tests
}

start().catch((err) => setStatus(`Could not start: ${err.message}`, true));
