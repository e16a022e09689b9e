// Keep the status page current: swap in a freshly rendered status fragment every few seconds
// and let the "last refresh" age tick between swaps. No libraries: the page must work offline.
(function () {
  "use strict";
  var main = document.getElementById("status");
  var refreshMs = Number(document.body.getAttribute("data-refresh-ms")) || 5000;
  var loadedAt = Date.now();

  function tick() {
    var age = document.getElementById("refresh-age");
    if (!age || age.getAttribute("data-age") === "") {
      return;
    }
    var seconds = Number(age.getAttribute("data-age")) + (Date.now() - loadedAt) / 1000;
    age.textContent = Math.round(seconds) + " s";
  }

  function reload() {
    fetch("partials/status", { cache: "no-store" })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (html) {
        main.innerHTML = html;
        loadedAt = Date.now();
        document.body.classList.remove("offline");
      })
      .catch(function () {
        document.body.classList.add("offline");
      });
  }

  document.body.classList.add("live");
  setInterval(tick, 1000);
  setInterval(reload, refreshMs);
})();
