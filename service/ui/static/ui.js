// s2ap web page: the project's own few lines. The page works without them (a <noscript>
// meta refresh takes over); with them, a log opens at its newest line, and the refresh waits
// while the reader is typing, has text selected or an open <details>, and while the tab is
// hidden.
(function () {
  "use strict";
  document.querySelectorAll("pre[data-tail]").forEach(function (pre) {
    pre.scrollTop = pre.scrollHeight;
  });
  var body = document.body;
  var seconds = Number(body && body.getAttribute("data-refresh"));
  if (!seconds) return;
  function busy() {
    var active = document.activeElement;
    if (active && /^(INPUT|TEXTAREA|SELECT|BUTTON)$/.test(active.tagName)) return true;
    if (String(window.getSelection ? window.getSelection() : "").length > 0) return true;
    return document.querySelector("details[open]") !== null;
  }
  function tick() {
    if (document.visibilityState === "visible" && !busy()) {
      window.location.reload();
    } else {
      window.setTimeout(tick, seconds * 1000);
    }
  }
  window.setTimeout(tick, seconds * 1000);
})();
