// Live updates for the dashboard's pages: the page reads the same without
// them. A page's <main data-live=URL> streams its live regions, each sent
// whole as HTML the service rendered (and escaped); a console's
// <pre data-console=URL> streams its text, kept as text.
"use strict";
(function () {
  // Says to the style sheet that the page updates by itself.
  document.documentElement.classList.add("js");
  var status = document.getElementById("live-status");
  function show(text, cls) {
    if (status) {
      status.textContent = text;
      status.className = "live-status " + cls;
    }
  }
  if (!window.EventSource) {
    return;
  }
  var main = document.querySelector("main[data-live]");
  if (main) {
    var es = new EventSource(main.getAttribute("data-live"));
    es.addEventListener("open", function () { show("live", "on"); });
    es.addEventListener("error", function () {
      show(es.readyState === EventSource.CLOSED ? "not live: reload" : "reconnecting", "off");
    });
    es.addEventListener("fragment", function (e) {
      var f = JSON.parse(e.data);
      var el = document.getElementById(f.id);
      if (el) {
        el.innerHTML = f.html;
      }
    });
  }
  var pre = document.querySelector("pre[data-console]");
  if (pre) {
    var limit = 256 * 1024;
    var con = new EventSource(pre.getAttribute("data-console"));
    con.addEventListener("reset", function () { pre.textContent = ""; });
    con.addEventListener("text", function (e) {
      var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      var text = pre.textContent + JSON.parse(e.data);
      if (text.length > limit) {
        text = text.slice(text.length - limit);
      }
      pre.textContent = text;
      if (atEnd) {
        pre.scrollTop = pre.scrollHeight;
      }
    });
  }
})();
