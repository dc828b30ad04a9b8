// The Next Chat page: sign in, groups, one conversation at a time, members,
// and a connection that comes back by itself without losing or repeating a
// message. Text from other users only ever goes into the page as text.

import { HubConnection } from "./hub.js";

const $ = (id) => document.getElementById(id);
const HUB_PATH = "next-chat";
const GROUPS_PAGE = 50;
const HISTORY_PAGE = 50;
/** Pages read at most to close a gap after a reconnect (GetMessagesAfter). */
const CATCH_UP_PAGES = 200;
const CATCH_UP_PAGE = 500;
const RECONNECT_DELAYS_MS = [0, 1000, 2000, 5000, 10000, 10000, 10000];
const MEMBERS_REFRESH_MS = 10000;

const config = { auth: "header", maxTextChars: 16384, maxMembers: 20 };
const state = {
  identity: null,
  connection: null,
  status: "signed-out",
  /** groupId -> { messages: Message[], seen: Set<id>, unread, complete, buffer } */
  joined: new Map(),
  current: null,
  groupsAfter: null,
  groupsDone: false,
  reconnectAttempt: 0,
  reconnectTimer: null,
  /** The members shown for the current group. */
  members: new Set(),
};

// ------------------------------------------------------------------ status

function setStatus(status, text) {
  state.status = status;
  $("status").dataset.state = status;
  $("status-text").textContent = text;
  $("retry").hidden = status !== "disconnected";
  document.body.dataset.connection = status;
}

// ------------------------------------------------------------------ sign in

async function loadConfig() {
  try {
    const response = await fetch("web-config.json");
    if (response.ok) Object.assign(config, await response.json());
  } catch {
    // The defaults serve a server without the file.
  }
  if (config.auth === "jwt") {
    $("identity-label").textContent = "Access token";
    $("sign-in-hint").textContent = "Paste an access token (JWT) issued for this server.";
    $("identity").autocomplete = "off";
  }
}

function showSignIn(error) {
  $("sign-in-view").hidden = false;
  $("chat-view").hidden = true;
  $("sign-out").hidden = true;
  $("me").textContent = "";
  $("sign-in-error").textContent = error ?? "";
  setStatus("signed-out", "Not signed in");
  $("identity").focus();
}

function showChat() {
  $("sign-in-view").hidden = true;
  $("chat-view").hidden = false;
  $("sign-out").hidden = false;
}

/** The user id a token names (its `userClaim`), to set the user's own messages apart. */
function tokenUser(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(decodeURIComponent(escape(atob(payload))));
    return String(claims[config.userClaim ?? "sub"] ?? "");
  } catch {
    return "";
  }
}

async function signIn(identity) {
  state.identity = identity;
  state.user = config.auth === "jwt" ? tokenUser(identity) : identity;
  localStorage.setItem("next-chat.identity", identity);
  localStorage.setItem("next-chat.auth", config.auth);
  $("me").textContent = state.user ? `Signed in as ${state.user}` : "Signed in";
  showChat();
  await connect();
}

function signOut() {
  localStorage.removeItem("next-chat.identity");
  localStorage.removeItem("next-chat.joined");
  clearTimeout(state.reconnectTimer);
  state.connection?.stop();
  state.connection = null;
  state.everConnected = false;
  state.joined.clear();
  state.current = null;
  renderJoined();
  renderRoom();
  showSignIn();
}

// ------------------------------------------------------------------ connection

async function connect() {
  clearTimeout(state.reconnectTimer);
  const reconnecting = state.everConnected || state.reconnectAttempt > 0;
  setStatus(reconnecting ? "reconnecting" : "connecting", reconnecting ? "Reconnecting…" : "Connecting…");
  const connection = new HubConnection(new URL(HUB_PATH, location.href), state.identity);
  connection.on("OnMessage", (message) => onMessage(message));
  connection.on("OnHistory", (messages) => {
    connection.lastHistory = messages;
  });
  connection.onclose = (error, allowReconnect) => onClosed(connection, error, allowReconnect);
  try {
    await connection.start();
  } catch (error) {
    if (error.status === 401 || error.status === 403) {
      // The identity itself was refused: say why, and ask again.
      state.joined.clear();
      showSignIn(error.message);
      return;
    }
    scheduleReconnect(error.message);
    return;
  }
  state.connection = connection;
  state.everConnected = true;
  state.reconnectAttempt = 0;
  setStatus("connected", "Connected");
  await rejoinAll(connection);
  await loadGroups(true);
}

function onClosed(connection, error, allowReconnect) {
  if (state.connection !== connection) return;
  state.connection = null;
  if (!allowReconnect) {
    setStatus("disconnected", `Disconnected${error ? `: ${error}` : ""}`);
    return;
  }
  scheduleReconnect(error);
}

function scheduleReconnect(reason) {
  const delay = RECONNECT_DELAYS_MS[state.reconnectAttempt];
  if (delay === undefined) {
    setStatus("disconnected", `Disconnected${reason ? `: ${reason}` : ""}`);
    return;
  }
  state.reconnectAttempt += 1;
  setStatus("reconnecting", "Reconnecting…");
  state.reconnectTimer = setTimeout(() => connect(), delay);
}

function retry() {
  state.reconnectAttempt = 0;
  connect();
}

/** Joins every group joined before the connection dropped and catches up. */
async function rejoinAll(connection) {
  for (const [groupId, group] of state.joined) {
    group.catchingUp = true;
    try {
      await joinOn(connection, groupId, group);
    } catch (error) {
      group.catchingUp = false;
      if (connection !== state.connection) return;
      showGroupError(`Could not rejoin ${groupId}: ${error.message}`);
    }
  }
}

// ------------------------------------------------------------------ groups

function showGroupError(text) {
  $("group-error").textContent = text ?? "";
}

async function loadGroups(fresh) {
  const connection = state.connection;
  if (!connection) return;
  if (fresh) {
    state.groupsAfter = null;
    state.groupsDone = false;
    $("all-groups").replaceChildren();
  }
  try {
    const page = await connection.invoke("ListGroupsPage", state.groupsAfter, GROUPS_PAGE);
    for (const { groupId } of page) $("all-groups").append(groupItem(groupId));
    state.groupsDone = page.length < GROUPS_PAGE;
    if (page.length) state.groupsAfter = page[page.length - 1].groupId;
  } catch (error) {
    showGroupError(error.message);
  }
  $("more-groups").hidden = state.groupsDone;
  filterGroups();
}

function groupItem(groupId) {
  const item = document.createElement("li");
  item.dataset.group = groupId;
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = groupId;
  const join = document.createElement("button");
  join.type = "button";
  join.textContent = state.joined.has(groupId) ? "Open" : "Join";
  join.setAttribute("aria-label", `${join.textContent} ${groupId}`);
  join.addEventListener("click", () => joinGroup(groupId));
  item.append(name, join);
  return item;
}

function filterGroups() {
  const query = $("new-group").value.trim().toLowerCase();
  for (const item of $("all-groups").children) {
    item.hidden = query !== "" && !item.dataset.group.toLowerCase().includes(query);
  }
}

async function createGroup(groupId) {
  showGroupError("");
  if (!groupId) return;
  try {
    await state.connection.invoke("CreateGroup", groupId);
  } catch (error) {
    showGroupError(error.message);
    return;
  }
  $("new-group").value = "";
  await joinGroup(groupId);
  await loadGroups(true);
}

async function joinGroup(groupId) {
  showGroupError("");
  if (state.joined.has(groupId)) {
    openGroup(groupId);
    return;
  }
  const connection = state.connection;
  if (!connection) return;
  const group = newGroupState();
  try {
    const result = await joinOn(connection, groupId, group, true);
    if (result === 1) {
      showGroupError(`Group ${groupId} is full (${config.maxMembers} of ${config.maxMembers} members). Try again later.`);
      return;
    }
  } catch (error) {
    showGroupError(error.message);
    return;
  }
  openGroup(groupId);
  for (const item of $("all-groups").children) {
    if (item.dataset.group === groupId) item.replaceWith(groupItem(groupId));
  }
}

/** Joined groups are remembered in the browser, so a reload rejoins them. */
function saveJoined() {
  localStorage.setItem("next-chat.joined", JSON.stringify([...state.joined.keys()]));
}

function restoreJoined() {
  try {
    for (const groupId of JSON.parse(localStorage.getItem("next-chat.joined") ?? "[]")) {
      if (typeof groupId === "string") state.joined.set(groupId, newGroupState());
    }
  } catch {
    // Nothing to restore.
  }
  renderJoined();
}

function newGroupState() {
  return { messages: [], seen: new Set(), unread: 0, complete: false, buffer: [], catchingUp: true, caughtUp: 0 };
}

/**
 * JoinGroup on `connection`, then merges its OnHistory into `group`: on a first
 * join the history is the conversation; on a rejoin the page reads forward with
 * GetMessagesAfter from the last message it showed until it meets that history,
 * so that every message sent meanwhile appears once, in order.
 */
async function joinOn(connection, groupId, group, first = false) {
  connection.lastHistory = null;
  if (first) {
    state.joined.set(groupId, group);
    saveJoined();
    renderJoined();
  }
  let result;
  try {
    result = await connection.invoke("JoinGroup", groupId);
  } catch (error) {
    if (first) forget(groupId);
    throw error;
  }
  if (result === 1) {
    if (first) forget(groupId);
    else state.joined.delete(groupId);
    saveJoined();
    group.catchingUp = false;
    renderJoined();
    renderRoom();
    return result;
  }
  const history = connection.lastHistory ?? [];
  const resumed = group.messages.length > 0;
  let missed;
  if (!resumed) {
    missed = history;
    group.complete = history.length < 100;
  } else {
    // Page forward from the last message shown until the pages meet the
    // rejoin's history (or end): whatever was sent meanwhile, on any instance.
    const last = group.messages[group.messages.length - 1].id;
    const inHistory = new Set(history.map((m) => m.id));
    const caught = [];
    for (let after = last, pages = 0; pages < CATCH_UP_PAGES; pages++) {
      const page = await connection.invoke("GetMessagesAfter", groupId, after, CATCH_UP_PAGE);
      const meets = page.findIndex((m) => inHistory.has(m.id));
      caught.push(...(meets < 0 ? page : page.slice(0, meets)));
      if (page.length === 0 || meets >= 0) break;
      after = page[page.length - 1].id;
    }
    missed = caught.concat(history).filter((m) => !group.seen.has(m.id));
    group.caughtUp = missed.length;
  }
  append(groupId, group, missed, resumed);
  group.catchingUp = false;
  if (groupId === state.current && !resumed) renderRoom();
  const waiting = group.buffer;
  group.buffer = [];
  append(groupId, group, waiting, true);
  if (groupId === state.current) refreshMembers();
  return result;
}

function forget(groupId) {
  state.joined.delete(groupId);
  saveJoined();
  if (state.current === groupId) state.current = null;
  renderJoined();
  renderRoom();
}

async function leaveGroup() {
  const groupId = state.current;
  if (!groupId) return;
  try {
    await state.connection?.invoke("LeaveGroup", groupId);
  } catch (error) {
    $("send-error").textContent = error.message;
    return;
  }
  forget(groupId);
  for (const item of $("all-groups").children) {
    if (item.dataset.group === groupId) item.replaceWith(groupItem(groupId));
  }
}

// ------------------------------------------------------------------ messages

function onMessage(message) {
  const group = state.joined.get(message.groupId);
  if (!group) return;
  if (group.catchingUp) {
    group.buffer.push(message);
    return;
  }
  append(message.groupId, group, [message], true);
}

function append(groupId, group, messages, live) {
  const fresh = messages.filter((m) => !group.seen.has(m.id));
  if (fresh.length === 0) {
    if (groupId === state.current) renderNotice(group);
    return;
  }
  for (const m of fresh) group.seen.add(m.id);
  group.messages.push(...fresh);
  if (groupId === state.current) {
    const list = $("messages");
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    for (const m of fresh) list.append(messageItem(m));
    renderNotice(group);
    // Someone new wrote: the member list is out of date.
    if (fresh.some((m) => !state.members.has(m.authorId))) refreshMembers();
    if (atBottom || fresh.some((m) => m.authorId === state.user)) list.scrollTop = list.scrollHeight;
  } else if (live) {
    group.unread += fresh.filter((m) => m.authorId !== state.user).length;
    renderJoined();
  }
}

function messageItem(message) {
  const item = document.createElement("li");
  item.className = "message";
  item.dataset.id = message.id;
  if (message.authorId === state.user) item.classList.add("mine");
  const head = document.createElement("div");
  head.className = "meta";
  const author = document.createElement("span");
  author.className = "author";
  author.textContent = message.authorId;
  const time = document.createElement("time");
  const sent = new Date(message.sendTime);
  time.dateTime = message.sendTime;
  time.textContent = sent.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  time.title = sent.toLocaleString();
  head.append(author, time);
  const text = document.createElement("p");
  text.className = "text";
  text.textContent = message.text;
  item.append(head, text);
  return item;
}

function renderNotice(group) {
  const old = $("messages").querySelector(".notice");
  old?.remove();
  if (group.caughtUp > 0) {
    const notice = document.createElement("li");
    notice.className = "notice";
    notice.textContent = `${group.caughtUp} message${group.caughtUp === 1 ? "" : "s"} arrived while you were away.`;
    $("messages").append(notice);
    group.caughtUp = 0;
  }
}

async function loadOlder() {
  const groupId = state.current;
  const group = state.joined.get(groupId);
  if (!group || group.complete || group.loadingOlder || !state.connection || group.messages.length === 0) return;
  group.loadingOlder = true;
  try {
    const older = await state.connection.invoke("GetHistory", groupId, group.messages[0].id, HISTORY_PAGE);
    const fresh = older.filter((m) => !group.seen.has(m.id));
    if (older.length === 0) group.complete = true;
    if (fresh.length && groupId === state.current) {
      for (const m of fresh) group.seen.add(m.id);
      group.messages.unshift(...fresh);
      const list = $("messages");
      const before = list.scrollHeight;
      list.prepend(...fresh.map(messageItem));
      list.scrollTop += list.scrollHeight - before;
    }
  } catch (error) {
    $("send-error").textContent = error.message;
  } finally {
    group.loadingOlder = false;
  }
}

async function send() {
  const text = $("text").value;
  const groupId = state.current;
  if (!text.trim() || !groupId) return;
  if ([...text].length > config.maxTextChars) {
    $("send-error").textContent = `That is longer than ${config.maxTextChars} characters.`;
    return;
  }
  if (!state.connection) {
    $("send-error").textContent = "Not connected: the message was not sent.";
    return;
  }
  $("send-error").textContent = "";
  try {
    await state.connection.invoke("SendMessage", groupId, text);
    $("text").value = "";
    updateCount();
  } catch (error) {
    $("send-error").textContent = error.message;
  }
}

function updateCount() {
  const used = [...$("text").value].length;
  $("count").textContent = `${used} / ${config.maxTextChars}`;
  $("count").classList.toggle("over", used > config.maxTextChars);
}

// ------------------------------------------------------------------ rendering

function openGroup(groupId) {
  state.current = groupId;
  const group = state.joined.get(groupId);
  if (group) group.unread = 0;
  renderJoined();
  renderRoom();
  document.body.classList.remove("groups-open");
  $("toggle-groups").setAttribute("aria-expanded", "false");
  $("text").focus();
}

function renderJoined() {
  const list = $("joined");
  list.replaceChildren();
  for (const [groupId, group] of state.joined) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "joined-group";
    if (groupId === state.current) button.setAttribute("aria-current", "true");
    const name = document.createElement("span");
    name.textContent = groupId;
    button.append(name);
    if (group.unread > 0) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = String(group.unread);
      badge.setAttribute("aria-label", `${group.unread} unread`);
      button.append(badge);
    }
    button.addEventListener("click", () => openGroup(groupId));
    item.append(button);
    list.append(item);
  }
}

function renderRoom() {
  const group = state.joined.get(state.current);
  $("room").hidden = !group;
  $("empty-room").hidden = !!group;
  $("messages").replaceChildren();
  $("members").replaceChildren();
  $("member-count").textContent = "";
  if (!group) return;
  $("room-name").textContent = state.current;
  $("messages").append(...group.messages.map(messageItem));
  renderNotice(group);
  $("messages").scrollTop = $("messages").scrollHeight;
  $("send-error").textContent = "";
  updateCount();
  refreshMembers();
}

async function refreshMembers() {
  const groupId = state.current;
  const connection = state.connection;
  const group = state.joined.get(groupId);
  if (!groupId || !connection || !group || group.catchingUp) return;
  try {
    const members = await connection.invoke("ListMembers", groupId);
    if (groupId !== state.current) return;
    state.members = new Set(members);
    $("members").replaceChildren(
      ...members.map((user) => {
        const item = document.createElement("li");
        item.textContent = user;
        if (user === state.user) item.classList.add("me");
        return item;
      }),
    );
    $("member-count").textContent = `${members.length} of ${config.maxMembers}`;
  } catch {
    // Shown again at the next refresh; the conversation goes on.
  }
}

// ------------------------------------------------------------------ wiring

function wire() {
  $("sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    const identity = $("identity").value.trim();
    if (identity) signIn(identity);
  });
  $("sign-out").addEventListener("click", signOut);
  $("retry").addEventListener("click", retry);
  $("create").addEventListener("submit", (event) => {
    event.preventDefault();
    createGroup($("new-group").value.trim());
  });
  $("new-group").addEventListener("input", filterGroups);
  $("more-groups").addEventListener("click", () => loadGroups(false));
  $("leave").addEventListener("click", leaveGroup);
  $("compose").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("text").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  $("text").addEventListener("input", updateCount);
  $("messages").addEventListener("scroll", () => {
    if ($("messages").scrollTop < 40) loadOlder();
  });
  $("toggle-groups").addEventListener("click", () => {
    const open = document.body.classList.toggle("groups-open");
    $("toggle-groups").setAttribute("aria-expanded", String(open));
  });
  setInterval(refreshMembers, MEMBERS_REFRESH_MS);
}

async function main() {
  wire();
  await loadConfig();
  const saved = localStorage.getItem("next-chat.identity");
  if (saved && localStorage.getItem("next-chat.auth") === config.auth) {
    $("identity").value = saved;
    restoreJoined();
    await signIn(saved);
    const first = state.joined.keys().next();
    if (!first.done) openGroup(first.value);
  } else {
    showSignIn();
  }
}

main();
