// A small Markdown renderer for model answers that builds DOM nodes.
//
// Every piece of the answer becomes a text node (createTextNode / textContent), so HTML in
// an answer is shown as the characters it is made of and never parsed. Handled: fenced
// code blocks (with a copy button), headings, lists, block quotes, horizontal rules,
// paragraphs, and inline code, bold, italic and http(s) links.

const FENCE = /^\s*(```|~~~)\s*([\w+-]*)\s*$/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*\d+[.)]\s+(.*)$/;
const QUOTE = /^\s*>\s?(.*)$/;
const RULE = /^\s*([-*_])(\s*\1){2,}\s*$/;
// inline: `code`, **bold**, *italic* or _italic_, [text](http...)
const INLINE = /(`+)([^`]+?)\1|\*\*([^*]+)\*\*|__([^_]+)__|\*([^*\s][^*]*)\*|_([^_\s][^_]*)_|\[([^\]]+)\]\((https?:\/\/[^\s)]+)\)/;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

export function renderInline(text, parent) {
  let rest = text;
  for (let match = INLINE.exec(rest); match; match = INLINE.exec(rest)) {
    if (match.index > 0) parent.append(document.createTextNode(rest.slice(0, match.index)));
    const [all, , code, bold, bold2, italic, italic2, label, href] = match;
    if (code != null) parent.append(el("code", null, code));
    else if (bold != null || bold2 != null) renderInline(bold ?? bold2, parent.appendChild(el("strong")));
    else if (italic != null || italic2 != null) renderInline(italic ?? italic2, parent.appendChild(el("em")));
    else parent.append(link(label, href));
    rest = rest.slice(match.index + all.length);
  }
  if (rest) parent.append(document.createTextNode(rest));
}

function link(label, href) {
  const anchor = el("a", null, label);
  anchor.href = href; // only http(s) reaches here (see INLINE)
  anchor.rel = "noopener noreferrer";
  anchor.target = "_blank";
  return anchor;
}

function copyText(text, button) {
  const done = () => {
    button.textContent = "Copied";
    setTimeout(() => (button.textContent = "Copy"), 1500);
  };
  if (navigator.clipboard?.writeText) {
    navigator.clipboard.writeText(text).then(done, () => (button.textContent = "Copy failed"));
  }
}

function codeBlock(lines, language) {
  const wrapper = el("div", "code-block");
  const bar = el("div", "code-bar", language || "code");
  const button = el("button", "copy small", "Copy");
  button.type = "button";
  const code = el("code", null, lines.join("\n"));
  button.addEventListener("click", () => copyText(code.textContent, button));
  bar.append(button);
  const pre = el("pre");
  pre.append(code);
  wrapper.append(bar, pre);
  return wrapper;
}

function paragraph(lines) {
  const node = el("p");
  lines.forEach((line, index) => {
    if (index) node.append(el("br"));
    renderInline(line, node);
  });
  return node;
}

// One block starting at lines[i]; returns [node, next index].
function block(lines, i) {
  const line = lines[i];
  const fence = FENCE.exec(line);
  if (fence) {
    const body = [];
    let j = i + 1;
    while (j < lines.length && !(FENCE.exec(lines[j]) && lines[j].trim().startsWith(fence[1]))) body.push(lines[j++]);
    return [codeBlock(body, fence[2]), j + 1]; // an unclosed fence (still streaming) runs to the end
  }
  const heading = HEADING.exec(line);
  if (heading) {
    const node = el(`h${Math.min(heading[1].length + 2, 6)}`);
    renderInline(heading[2], node);
    return [node, i + 1];
  }
  if (RULE.test(line)) return [el("hr"), i + 1];
  for (const [pattern, tag] of [[BULLET, "ul"], [NUMBERED, "ol"]]) {
    if (pattern.test(line)) {
      const list = el(tag);
      let j = i;
      for (let item; j < lines.length && (item = pattern.exec(lines[j])); j++) renderInline(item[1], list.appendChild(el("li")));
      return [list, j];
    }
  }
  if (QUOTE.test(line)) {
    const quoted = [];
    let j = i;
    for (let item; j < lines.length && (item = QUOTE.exec(lines[j])); j++) quoted.push(item[1]);
    const node = el("blockquote");
    node.append(render(quoted.join("\n")));
    return [node, j];
  }
  const text = [];
  let j = i;
  while (j < lines.length && lines[j].trim() && !startsBlock(lines[j])) text.push(lines[j++]);
  return [paragraph(text.length ? text : [line]), Math.max(j, i + 1)];
}

function startsBlock(line) {
  return [FENCE, HEADING, BULLET, NUMBERED, QUOTE, RULE].some((pattern) => pattern.test(line));
}

// The answer as a DocumentFragment of safe nodes.
export function render(markdown) {
  const fragment = document.createDocumentFragment();
  const lines = markdown.replace(/\r\n?/g, "\n").split("\n");
  for (let i = 0; i < lines.length; ) {
    if (!lines[i].trim()) {
      i++;
      continue;
    }
    const [node, next] = block(lines, i);
    fragment.append(node);
    i = next;
  }
  return fragment;
}

// Replace the contents of `target` with the rendered answer.
export function renderInto(target, markdown) {
  target.replaceChildren(render(markdown));
}
