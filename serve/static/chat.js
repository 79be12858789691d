// The chat page of `koala serve-model`: plain JavaScript, no build step, no external resources.
//
// Everything the model or the user wrote is put on the page with textContent / text nodes only,
// never parsed as HTML: a reply containing "<b>" or "<script>" shows those characters.
"use strict";

(function () {
  const TOKEN_KEY = "koala-chat.token";
  const MAX_STOPS = 4; // the server's (and OpenAI's) limit

  const $ = (id) => document.getElementById(id);
  const el = {
    model: $("model"),
    temperature: $("temperature"),
    topP: $("top_p"),
    topK: $("top_k"),
    maxTokens: $("max_tokens"),
    seed: $("seed"),
    stops: $("stop_strings"),
    system: $("system"),
    token: $("token"),
    remember: $("remember"),
    messages: $("messages"),
    emptyHint: $("empty-hint"),
    composer: $("composer"),
    input: $("input"),
    send: $("send"),
    stop: $("stop"),
    newChat: $("new-chat"),
    error: $("error"),
    errorText: $("error-text"),
    errorClose: $("error-close"),
    settings: $("settings"),
    settingsToggle: $("settings-toggle"),
  };

  // The conversation sent with each request: {role, content} of every finished turn.
  let history = [];
  // The AbortController of the reply being streamed, or null when idle.
  let controller = null;
  // Bumped by "New chat", so that a reply still finishing belongs to no conversation.
  let conversation = 0;
  // Whether the banner shows a failure to list the models (cleared once they load).
  let modelsFailed = false;

  // ---- error banner -------------------------------------------------------------------------

  function showError(message) {
    el.errorText.textContent = message;
    el.error.hidden = false;
  }

  function clearError() {
    el.errorText.textContent = "";
    el.error.hidden = true;
  }

  // The message of an OpenAI-style error body `{"error": {"message", ...}}`, else the raw text.
  function errorMessage(status, statusText, bodyText) {
    let message = "";
    try {
      const body = JSON.parse(bodyText);
      if (body && body.error) {
        message = typeof body.error === "string" ? body.error : body.error.message || "";
      }
    } catch (_) {
      // not JSON: fall back to the text itself
    }
    if (!message) message = (bodyText || "").trim().slice(0, 500) || statusText || "request failed";
    let text = "Error " + status + ": " + message;
    if (status === 401) text += " (enter the API token under Settings → Access)";
    return text;
  }

  // ---- token --------------------------------------------------------------------------------

  function storage() {
    try {
      return window.localStorage;
    } catch (_) {
      return null;
    }
  }

  function loadToken() {
    const s = storage();
    const saved = s && s.getItem(TOKEN_KEY);
    if (saved) {
      el.token.value = saved;
      el.remember.checked = true;
    }
  }

  // The token is kept in localStorage only while "remember" is ticked; unticking forgets it.
  function saveToken() {
    const s = storage();
    if (!s) return;
    try {
      if (el.remember.checked && el.token.value) s.setItem(TOKEN_KEY, el.token.value);
      else s.removeItem(TOKEN_KEY);
    } catch (_) {
      // storage full or disabled: the token still works for this page
    }
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const token = el.token.value.trim();
    if (token) h["Authorization"] = "Bearer " + token;
    return h;
  }

  // ---- models -------------------------------------------------------------------------------

  function setModelOptions(ids, placeholder) {
    const previous = el.model.value;
    el.model.replaceChildren();
    if (ids.length === 0) {
      const opt = document.createElement("option");
      opt.value = "";
      opt.textContent = placeholder;
      el.model.appendChild(opt);
      return;
    }
    for (const id of ids) {
      const opt = document.createElement("option");
      opt.value = id;
      opt.textContent = id;
      el.model.appendChild(opt);
    }
    if (ids.includes(previous)) el.model.value = previous;
  }

  async function loadModels() {
    let resp;
    try {
      resp = await fetch("v1/models", { headers: headers() });
    } catch (e) {
      setModelOptions([], "(server unreachable)");
      modelsFailed = true;
      showError("Could not reach the server: " + e.message);
      return;
    }
    const text = await resp.text();
    if (!resp.ok) {
      setModelOptions([], "(no models)");
      modelsFailed = true;
      showError(errorMessage(resp.status, resp.statusText, text));
      return;
    }
    let ids = [];
    try {
      const body = JSON.parse(text);
      ids = (body.data || []).map((m) => String(m.id));
    } catch (e) {
      modelsFailed = true;
      showError("The model list is not valid JSON: " + e.message);
      return;
    }
    setModelOptions(ids, "(no models)");
    if (modelsFailed) {
      modelsFailed = false;
      clearError();
    }
  }

  // ---- settings -----------------------------------------------------------------------------

  // "\n", "\t" and "\\" in a stop line stand for a newline, a tab and a backslash.
  function unescapeStop(line) {
    return line.replace(/\\(n|t|\\)/g, (_, c) => (c === "n" ? "\n" : c === "t" ? "\t" : "\\"));
  }

  function numberField(input, label, opts) {
    const raw = input.value.trim();
    if (raw === "") {
      if (opts.optional) return undefined;
      throw new Error(label + " is empty");
    }
    const v = Number(raw);
    if (!Number.isFinite(v)) throw new Error(label + " is not a number: " + raw);
    if (opts.integer && !Number.isInteger(v)) throw new Error(label + " must be a whole number");
    if (opts.min !== undefined && (opts.minExclusive ? v <= opts.min : v < opts.min)) {
      throw new Error(label + " must be " + (opts.minExclusive ? "above " : "at least ") + opts.min);
    }
    if (opts.max !== undefined && v > opts.max) throw new Error(label + " must be at most " + opts.max);
    return v;
  }

  // The request's sampling fields, or an Error naming the bad setting.
  function samplingSettings() {
    const s = {
      temperature: numberField(el.temperature, "Temperature", { min: 0, max: 2 }),
      top_p: numberField(el.topP, "Top-p", { min: 0, minExclusive: true, max: 1 }),
      top_k: numberField(el.topK, "Top-k", { min: 0, integer: true }),
      max_tokens: numberField(el.maxTokens, "Max tokens", { min: 1, integer: true }),
    };
    const seed = numberField(el.seed, "Seed", { optional: true, integer: true });
    if (seed !== undefined) s.seed = seed;
    const stops = el.stops.value
      .split("\n")
      .filter((l) => l !== "")
      .map(unescapeStop);
    if (stops.length > MAX_STOPS) throw new Error("At most " + MAX_STOPS + " stop strings");
    if (stops.length > 0) s.stop = stops;
    return s;
  }

  // ---- conversation view --------------------------------------------------------------------

  function nearBottom() {
    const m = el.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 48;
  }

  function scrollToEnd() {
    el.messages.scrollTop = el.messages.scrollHeight;
  }

  // Appends a bubble; returns {root, text (a Text node), meta}.
  function addMessage(role, content) {
    const stick = nearBottom();
    const root = document.createElement("article");
    root.className = "msg " + role;
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = role === "user" ? "You" : "Assistant";
    const body = document.createElement("div");
    body.className = "text";
    const text = document.createTextNode(content);
    body.appendChild(text);
    const meta = document.createElement("div");
    meta.className = "meta";
    root.append(who, body, meta);
    el.messages.appendChild(root);
    el.emptyHint.hidden = true;
    if (stick) scrollToEnd();
    return { root, body, text, meta };
  }

  function setBusy(busy) {
    el.send.disabled = busy;
    el.stop.disabled = !busy;
    el.messages.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function usageText(usage) {
    if (!usage) return "";
    const parts = [];
    if (usage.prompt_tokens !== undefined) parts.push(usage.prompt_tokens + " prompt");
    if (usage.completion_tokens !== undefined) parts.push(usage.completion_tokens + " completion");
    return parts.length ? parts.join(" + ") + " tokens" : "";
  }

  // ---- SSE stream ---------------------------------------------------------------------------

  // Reads `data:` events from a fetch body, calling onData(string) for each, until the body
  // ends or "[DONE]" arrives; returns whether "[DONE]" came. Events may be split across reads
  // (even inside a UTF-8 character or a CRLF) and several may come in one read.
  async function readEvents(body, onData) {
    const reader = body.getReader();
    const decoder = new TextDecoder("utf-8");
    let buffer = "";
    let done = false; // "[DONE]" seen

    function dispatch(block) {
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("data:")) {
          data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
        }
        // comments (":"), event:, id: and retry: lines carry nothing we use
      }
      if (data.length === 0) return false;
      const payload = data.join("\n");
      if (payload.trim() === "[DONE]") return true;
      onData(payload);
      return false;
    }

    function drain(final) {
      buffer = buffer.replace(/\r\n?/g, (m, off) =>
        // a "\r" ending the buffer may be the first half of "\r\n": keep it until more arrives
        m === "\r" && off === buffer.length - 1 && !final ? m : "\n",
      );
      let at;
      while ((at = buffer.indexOf("\n\n")) !== -1) {
        const block = buffer.slice(0, at);
        buffer = buffer.slice(at + 2);
        if (dispatch(block)) return true;
      }
      if (final && buffer.trim() !== "") {
        const block = buffer;
        buffer = "";
        return dispatch(block);
      }
      return false;
    }

    try {
      while (!done) {
        const { value, done: end } = await reader.read();
        if (end) {
          buffer += decoder.decode();
          return drain(true);
        }
        buffer += decoder.decode(value, { stream: true });
        done = drain(false);
      }
      return true;
    } finally {
      // Stop reading after "[DONE]" or a bad event; harmless once the body has ended.
      reader.cancel().catch(() => {});
    }
  }

  // ---- sending ------------------------------------------------------------------------------

  async function send() {
    if (controller) return; // a reply is still streaming
    const content = el.input.value;
    if (content.trim() === "") {
      el.input.focus();
      return;
    }
    const model = el.model.value;
    if (!model) {
      showError("No model selected: the model list is empty or did not load.");
      return;
    }
    let sampling;
    try {
      sampling = samplingSettings();
    } catch (e) {
      showError("Settings: " + e.message);
      return;
    }
    clearError();

    history.push({ role: "user", content });
    const userMsg = addMessage("user", content);
    el.input.value = "";
    const reply = addMessage("assistant", "");
    reply.root.classList.add("streaming");
    scrollToEnd();

    const messages = [];
    const system = el.system.value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...history);
    const request = Object.assign(
      { model, messages, stream: true, stream_options: { include_usage: true } },
      sampling,
    );

    const conv = conversation;
    controller = new AbortController();
    setBusy(true);
    const started = performance.now();
    let finish = null;
    let usage = null;
    let failure = null;

    try {
      const resp = await fetch("v1/chat/completions", {
        method: "POST",
        headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
        body: JSON.stringify(request),
        signal: controller.signal,
      });
      if (!resp.ok) {
        failure = errorMessage(resp.status, resp.statusText, await resp.text());
      } else if (!resp.body) {
        failure = "The browser gave no response stream.";
      } else {
        const sawDone = await readEvents(resp.body, (payload) => {
          let chunk;
          try {
            chunk = JSON.parse(payload);
          } catch (e) {
            throw new Error("bad event from the server: " + payload.slice(0, 200));
          }
          if (chunk.error) {
            const e = chunk.error;
            throw new Error("server error: " + (typeof e === "string" ? e : e.message || JSON.stringify(e)));
          }
          if (chunk.usage) usage = chunk.usage;
          for (const choice of chunk.choices || []) {
            const delta = choice.delta || {};
            if (typeof delta.content === "string" && delta.content !== "") {
              const stick = nearBottom();
              reply.text.appendData(delta.content);
              if (stick) scrollToEnd();
            }
            if (choice.finish_reason) finish = choice.finish_reason;
          }
        });
        if (!finish) {
          finish = "unknown";
          if (!sawDone) failure = "The reply stream ended before the server finished it.";
        }
      }
    } catch (e) {
      if (e.name === "AbortError") finish = "abort";
      else failure = "Streaming failed: " + e.message;
    } finally {
      controller = null;
      setBusy(false);
    }

    if (conv !== conversation) return; // "New chat" was pressed meanwhile
    const partial = reply.text.data;
    reply.root.classList.remove("streaming");
    if (failure && partial === "") {
      // Nothing came back: undo the turn and give the text back, so it can be sent again.
      history.pop();
      userMsg.root.remove();
      reply.root.remove();
      if (el.input.value === "") el.input.value = content;
      el.emptyHint.hidden = el.messages.childElementCount > 0;
      showError(failure);
      el.input.focus();
      return;
    }
    if (failure) {
      finish = "error";
      showError(failure);
    }
    if (partial !== "") history.push({ role: "assistant", content: partial });

    const ms = performance.now() - started;
    const seconds = ms < 1000 ? Math.round(ms) + " ms" : (ms / 1000).toFixed(1) + " s";
    const what =
      finish === "abort"
        ? partial === ""
          ? "stopped by you before any text"
          : "stopped by you (partial reply)"
        : "stopped: " + finish;
    reply.meta.textContent = [what, usageText(usage), seconds].filter(Boolean).join(" · ");
    if (partial === "") reply.body.classList.add("empty");
    reply.root.dataset.finish = finish;
    el.input.focus();
  }

  function stop() {
    if (controller) controller.abort();
  }

  function newChat() {
    stop();
    conversation += 1;
    history = [];
    el.messages.replaceChildren();
    el.emptyHint.hidden = false;
    clearError();
    el.input.value = "";
    el.input.focus();
  }

  // ---- wiring -------------------------------------------------------------------------------

  el.composer.addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  el.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    } else if (e.key === "Escape" && controller) {
      e.preventDefault();
      stop();
    }
  });
  el.stop.addEventListener("click", stop);
  el.newChat.addEventListener("click", newChat);
  el.errorClose.addEventListener("click", clearError);
  el.settingsToggle.addEventListener("click", () => {
    const open = document.body.classList.toggle("settings-open");
    el.settingsToggle.setAttribute("aria-expanded", open ? "true" : "false");
  });
  el.token.addEventListener("change", () => {
    saveToken();
    loadModels();
  });
  el.remember.addEventListener("change", saveToken);

  loadToken();
  setBusy(false);
  loadModels();
})();
