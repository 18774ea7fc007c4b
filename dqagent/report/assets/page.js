// dqagent's status page: swap in the server-rendered figures every few seconds, without reloading.
// Served by the agent itself (Content-Security-Policy: script-src 'self'; no inline script, no eval). The page
// reads the same without this script: the server renders every figure, and <noscript> reloads the page.
"use strict";
(function () {
  const PERIOD_MS = 3000;
  async function refresh() {
    try {
      const answer = await fetch("/fragment.html", { cache: "no-store" });
      if (!answer.ok) {
        throw new Error("HTTP " + answer.status);
      }
      // Parsed as an inert document: nothing in it runs; then its <main> replaces ours.
      const parsed = new DOMParser().parseFromString(await answer.text(), "text/html");
      const fresh = parsed.getElementById("live");
      const live = document.getElementById("live");
      if (fresh && live) {
        live.replaceWith(document.adoptNode(fresh));
      }
      document.body.classList.remove("stale");
    } catch (err) {
      document.body.classList.add("stale");
    } finally {
      window.setTimeout(refresh, PERIOD_MS);
    }
  }
  document.documentElement.dataset.live = "on"; // what the page shows while it refreshes itself
  window.setTimeout(refresh, PERIOD_MS);
})();
