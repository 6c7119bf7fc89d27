// Keygate console: the only script. Pages work without it; it adds a copy
// button for a new secret, a confirmation before actions that say
// data-confirm, and scope chips over the scopes textarea. No inline script
// or style anywhere (the CSP forbids them).
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

// Scope chips. A textarea marked data-scope-chips stays the form's field (and
// what works without this script) but is hidden: scopes show as chips with a
// remove button, and a text input adds the typed scope on Enter, comma or
// space (Backspace on the empty input removes the last chip). Each chip is
// checked against the API's scope grammar (crates/domain/src/scope.rs); the
// server still validates and its errors still show next to the field. The
// textarea always holds the chips (and any scope still being typed), joined
// by spaces, so the form posts exactly what it did before.
(function () {
  var MAX_PART_CHARS = 64;
  var MAX_SCOPE_CHARS = 2 * MAX_PART_CHARS + 1;
  var MAX_SCOPES = 100;
  var PART = /^[a-z0-9][a-z0-9_.-]*$/;
  var SEPARATORS = /[\s,]+/;
  var GRAMMAR = "use resource:action, resource:* or *, each part 1-64 characters " +
    "of a-z, 0-9, _ . or - starting with a letter or digit";

  function byteLength(text) {
    return window.TextEncoder ? new TextEncoder().encode(text).length : text.length;
  }

  function validPart(part) {
    return part.length >= 1 && part.length <= MAX_PART_CHARS && PART.test(part);
  }

  // Why `scope` is not a scope the API accepts, or "" if it is one: the
  // rules of Scope::parse, in its order.
  function scopeProblem(scope) {
    if (byteLength(scope) > MAX_SCOPE_CHARS) return "too long";
    if (scope === "*") return "";
    var colon = scope.indexOf(":");
    if (colon < 0) return "missing \u201c:\u201d";
    if (!validPart(scope.slice(0, colon))) return "bad resource";
    var action = scope.slice(colon + 1);
    if (action !== "*" && !validPart(action)) return "bad action";
    return "";
  }

  // The scopes in `text`, split as the server splits the textarea.
  function split(text) {
    return text.split(SEPARATORS).filter(function (s) { return s !== ""; });
  }

  // At most 64 characters of `scope`, for messages.
  function quoted(scope) {
    return "\u201c" + (scope.length > 64 ? scope.slice(0, 64) + "\u2026" : scope) + "\u201d";
  }

  function make(tag, className) {
    var element = document.createElement(tag);
    if (className) element.className = className;
    return element;
  }

  function enhance(textarea) {
    var id = textarea.id;
    var field = textarea.parentElement;
    var label = document.querySelector('label[for="' + id + '"]');
    var hint = field.querySelector(".hint");
    var serverError = field.querySelector(".field-error[id]");

    var editor = make("div", "chip-editor");
    var list = make("ul", "chips");
    list.id = id + "-chips";
    list.setAttribute("aria-label", label ? label.textContent : "Scopes");
    var entry = make("input", "chip-entry");
    entry.type = "text";
    entry.id = id + "-entry";
    entry.autocomplete = "off";
    entry.spellcheck = false;
    entry.setAttribute("autocapitalize", "none");
    entry.setAttribute("enterkeyhint", "enter");
    editor.appendChild(list);
    editor.appendChild(entry);
    var problems = make("ul", "chip-problems");
    problems.id = id + "-problems";
    problems.hidden = true;
    var status = make("p", "visually-hidden");
    status.id = id + "-status";
    status.setAttribute("role", "status");

    textarea.parentNode.insertBefore(editor, textarea.nextSibling);
    editor.parentNode.insertBefore(problems, editor.nextSibling);
    problems.parentNode.insertBefore(status, problems.nextSibling);
    textarea.hidden = true;
    if (label) label.htmlFor = entry.id;
    if (hint) {
      hint.textContent = "Type a scope, then Enter, comma or space to add it: " +
        "resource:action, resource:* or *. Backspace in the empty box removes the last one.";
    }
    entry.setAttribute("aria-describedby", [hint, problems, serverError]
      .filter(function (e) { return e && e.id; })
      .map(function (e) { return e.id; })
      .join(" "));

    function scopes() {
      return Array.prototype.map.call(list.children, function (item) {
        return item.getAttribute("data-scope");
      });
    }

    function announce(message) {
      status.textContent = message;
    }

    // Writes the chips (and what is being typed) to the textarea and lists
    // what is wrong with them.
    function update() {
      var all = scopes();
      textarea.value = all.concat(split(entry.value)).join(" ");
      problems.textContent = "";
      all.forEach(function (scope) {
        var problem = scopeProblem(scope);
        if (!problem) return;
        var item = make("li");
        item.textContent = "\u26a0 " + quoted(scope) + " is not a valid scope: " +
          problem + "; " + GRAMMAR + ".";
        problems.appendChild(item);
      });
      if (all.length > MAX_SCOPES) {
        var tooMany = make("li");
        tooMany.textContent = "\u26a0 At most " + MAX_SCOPES + " scopes, there are " +
          all.length + ".";
        problems.appendChild(tooMany);
      }
      problems.hidden = !problems.firstChild;
      if (problems.firstChild || serverError) {
        entry.setAttribute("aria-invalid", "true");
      } else {
        entry.removeAttribute("aria-invalid");
      }
    }

    function chip(scope) {
      var problem = scopeProblem(scope);
      var item = make("li", problem ? "chip invalid" : "chip");
      item.setAttribute("data-scope", scope);
      if (problem) {
        var mark = make("span", "chip-mark");
        mark.setAttribute("aria-hidden", "true");
        mark.textContent = "\u26a0";
        item.appendChild(mark);
      }
      var text = make("span", "chip-text");
      text.textContent = scope;
      item.appendChild(text);
      if (problem) {
        var invalid = make("span", "visually-hidden");
        invalid.textContent = " (invalid: " + problem + ")";
        item.appendChild(invalid);
      }
      var remove = make("button", "chip-remove");
      remove.type = "button";
      remove.setAttribute("aria-label", "Remove scope " + scope);
      remove.textContent = "\u00d7";
      item.appendChild(remove);
      return item;
    }

    // Adds the scopes in `text` as chips, skipping ones already there.
    function add(text) {
      var said = [];
      split(text).forEach(function (scope) {
        if (scopes().indexOf(scope) >= 0) {
          said.push(scope + " is already added.");
          return;
        }
        list.appendChild(chip(scope));
        var problem = scopeProblem(scope);
        said.push("Added scope " + scope + (problem ? ", which is not valid: " + problem : "") + ".");
      });
      if (said.length) announce(said.join(" "));
    }

    // Turns everything typed into chips.
    function commit() {
      if (entry.value.trim() === "") {
        entry.value = "";
        return;
      }
      var text = entry.value;
      entry.value = "";
      add(text);
      update();
    }

    entry.addEventListener("keydown", function (event) {
      if (event.isComposing) return;
      if (event.key === "Enter" || event.key === "," || event.key === " ") {
        // Enter in an empty box submits the form, as in any text field.
        if (event.key === "Enter" && entry.value.trim() === "") return;
        event.preventDefault();
        commit();
      } else if (event.key === "Backspace" && entry.value === "" && list.lastElementChild) {
        event.preventDefault();
        var last = list.lastElementChild;
        list.removeChild(last);
        update();
        announce("Removed scope " + last.getAttribute("data-scope") + ".");
      }
    });
    // Pasted text: what comes before the last separator becomes chips.
    entry.addEventListener("input", function () {
      var text = entry.value;
      var cut = text.search(/[\s,][^\s,]*$/);
      if (cut >= 0) {
        entry.value = text.slice(cut + 1);
        add(text.slice(0, cut));
      }
      update();
    });
    entry.addEventListener("blur", commit);
    list.addEventListener("click", function (event) {
      var button = event.target.closest(".chip-remove");
      if (!button) return;
      var item = button.parentElement;
      var next = item.nextElementSibling || item.previousElementSibling;
      list.removeChild(item);
      update();
      announce("Removed scope " + item.getAttribute("data-scope") + ".");
      (next ? next.querySelector(".chip-remove") : entry).focus();
    });
    // A click on the box, beside the chips, goes to the text input.
    editor.addEventListener("click", function (event) {
      if (event.target === editor || event.target === list) entry.focus();
    });

    add(textarea.value);
    announce("");
    update();
  }

  Array.prototype.forEach.call(document.querySelectorAll("textarea[data-scope-chips]"), enhance);
})();
