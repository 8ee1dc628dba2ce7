// s2ap web page: the project's own few lines. The page works without them (a <noscript>
// meta refresh reloads a running job's pages); with them, a log opens at its newest line and
// a running job's page follows it in place: every few seconds the script fetches the page
// again and swaps in each part marked data-live whose content changed, so the reader keeps
// their scroll position, and a log scrolled back stays where it is. It waits while the tab
// is hidden or the reader has text selected, and stops when the job has ended (the page
// fetched then asks for no refresh).
(function () {
  "use strict";
  function tail(pre) {
    pre.scrollTop = pre.scrollHeight;
  }
  document.querySelectorAll("pre[data-tail]").forEach(tail);
  var body = document.body;
  var seconds = Number(body && body.getAttribute("data-refresh"));
  if (!seconds || !window.fetch || !window.DOMParser) return;

  function busy() {
    return String(window.getSelection ? window.getSelection() : "").length > 0;
  }

  function swap(fresh) {
    document.querySelectorAll("[data-live][id]").forEach(function (old) {
      var next = fresh.getElementById(old.id);
      if (!next || next.innerHTML === old.innerHTML) return;
      var pre = old.querySelector("pre[data-tail]");
      var atEnd = pre && pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      var kept = pre ? pre.scrollTop : 0;
      old.innerHTML = next.innerHTML;
      var now = old.querySelector("pre[data-tail]");
      if (now) {
        if (!pre || atEnd) tail(now);
        else now.scrollTop = kept;
      }
    });
  }

  function tick() {
    if (document.visibilityState !== "visible" || busy()) {
      window.setTimeout(tick, seconds * 1000);
      return;
    }
    window
      .fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (response.redirected || !response.ok) {
          window.location.reload(); // signed out meanwhile, or an error page: show it
          return null;
        }
        return response.text();
      })
      .then(function (html) {
        if (html === null) return;
        var fresh = new window.DOMParser().parseFromString(html, "text/html");
        swap(fresh);
        var again = Number(fresh.body && fresh.body.getAttribute("data-refresh"));
        if (again) {
          window.setTimeout(tick, again * 1000);
        } else {
          body.removeAttribute("data-refresh");
          var note = document.getElementById("refresh-note");
          if (note) note.remove();
        }
      })
      .catch(function () {
        window.setTimeout(tick, seconds * 1000); // the service restarting: try again later
      });
  }
  window.setTimeout(tick, seconds * 1000);
})();
