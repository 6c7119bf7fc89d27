// Keygate console: the only script. Pages work without it; it adds a copy
// button for a new secret and a confirmation before actions that say
// data-confirm. No inline script anywhere (the CSP forbids it).
"use strict";
document.addEventListener("click", function (event) {
  var button = event.target.closest("[data-copy]");
  if (!button) return;
  var field = document.getElementById(button.getAttribute("data-copy"));
  var status = button.parentElement.querySelector(".copied");
  if (!field) return;
  field.select();
  var done = function () { if (status) status.textContent = "Copied."; };
  if (navigator.clipboard && navigator.clipboard.writeText) {
    navigator.clipboard.writeText(field.value).then(done, function () {
      if (status) status.textContent = "Press Ctrl+C (or Cmd+C) to copy.";
    });
  } else {
    done();
  }
});
document.addEventListener("submit", function (event) {
  var message = event.target.getAttribute("data-confirm");
  if (message && !window.confirm(message)) event.preventDefault();
});
