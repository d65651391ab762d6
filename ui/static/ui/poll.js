// Lists and detail pages refresh themselves: every element with data-poll="<seconds>"
// is replaced by the server's partial for the current URL (filters and page kept).
// A refresh is skipped while the operator is typing in it or has ticked a box.
(function () {
  "use strict";
  function busy(el) {
    var active = document.activeElement;
    if (active && el.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName)) return true;
    var fields = el.querySelectorAll("input, textarea");
    for (var i = 0; i < fields.length; i++) {
      var f = fields[i];
      if ((f.type === "checkbox" || f.type === "radio") ? f.checked !== f.defaultChecked : f.value !== f.defaultValue) {
        return true;
      }
    }
    return false;
  }
  function refresh(el) {
    if (document.hidden || busy(el)) return;
    fetch(window.location.href, {headers: {"X-Opscore-Partial": "1"}, credentials: "same-origin"})
      .then(function (r) { if (!r.ok) throw new Error(r.status); return r.text(); })
      .then(function (html) {
        if (busy(el)) return;
        el.innerHTML = html;
        el.dataset.refreshedAt = new Date().toISOString();
        el.classList.remove("poll-error");
      })
      .catch(function () { el.classList.add("poll-error"); });
  }
  document.querySelectorAll("[data-poll]").forEach(function (el) {
    var seconds = parseFloat(el.dataset.poll) || 5;
    setInterval(function () { refresh(el); }, seconds * 1000);
  });
  // <form data-confirm="Question?">: ask before submitting (no inline onsubmit: Content-Security-Policy).
  // Delegated, so forms in refreshed partials are covered too.
  document.addEventListener("submit", function (e) {
    var form = e.target.closest("form[data-confirm]");
    if (form && !window.confirm(form.dataset.confirm)) e.preventDefault();
  }, true);
  // Select-all checkbox on the failures queue.
  document.addEventListener("change", function (e) {
    if (e.target.matches("[data-select-all]")) {
      document.querySelectorAll("input[name=ids]").forEach(function (box) { box.checked = e.target.checked; });
    }
  });
})();
