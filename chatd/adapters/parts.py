"""chatd.adapters.parts ~~~ Reading OpenAI-shaped messages, for wire formats that translate them.

chatd's neutral request is OpenAI chat completions' (:mod:`chatd.neutral`);
the Anthropic and Responses wire formats take it apart into their own blocks
and items. What both need lives here: a turn's text, a tool call's arguments
as an object, a ``data:`` image URL split into its media type and payload.
Validation (:mod:`chatd.validation`) checks roles and that content is a string
or a list of typed parts; deeper surprises raise :class:`BadRequest` here,
naming the field, so a malformed turn is a 400 and never a 500.
"""

from __future__ import annotations

from chatd import codec
from chatd.errors import BadRequest


def text_of(content, where: str) -> str:
    """Return the text of a message's content: the string, or its text parts joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.get("type") != "text":
            raise BadRequest(f"{where}.content[{j}] must be a text part here")
        texts.append(text_field(part, f"{where}.content[{j}]"))
    return "".join(texts)


def text_field(part: dict, where: str) -> str:
    text = part.get("text")
    if not isinstance(text, str):
        raise BadRequest(f"{where}.text must be a string")
    return text


def image_url_of(part: dict, where: str) -> tuple[str, str | None]:
    """Return (url, detail) of an ``image_url`` part (a bare string URL is tolerated)."""
    image = part.get("image_url")
    if isinstance(image, str):
        return image, None
    if isinstance(image, dict) and isinstance(image.get("url"), str):
        return image["url"], image.get("detail")
    raise BadRequest(f"{where}.image_url.url must be a string")


def split_data_url(url: str, where: str) -> tuple[str, str]:
    """Return (media type, base64 payload) of a ``data:<type>;base64,<data>`` URL."""
    head, comma, data = url.partition(",")
    if not comma or not head.endswith(";base64"):
        raise BadRequest(f"{where}.image_url.url must be a base64 data: URL or an http(s) URL")
    return head[len("data:") : -len(";base64")], data


def arguments_object(call, where: str) -> dict:
    """Return a tool call's arguments (JSON text, or an object) as an object."""
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise BadRequest(f"{where}.function must be an object")
    arguments = call["function"].get("arguments")
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, str):
        try:
            arguments = codec.loads(arguments)
        except codec.DecodeError:
            raise BadRequest(f"{where}.function.arguments is not valid JSON") from None
    if not isinstance(arguments, dict):
        raise BadRequest(f"{where}.function.arguments must be a JSON object")
    return arguments


def arguments_text(call, where: str) -> str:
    """Return a tool call's arguments as JSON text, as OpenAI carries them."""
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise BadRequest(f"{where}.function must be an object")
    arguments = call["function"].get("arguments")
    if isinstance(arguments, str):
        return arguments or "{}"
    if arguments is None:
        return "{}"
    return codec.dumps(arguments).decode()


def call_id_name(call: dict, where: str) -> tuple[str, str]:
    """Return (id, function name) of an assistant's tool call."""
    call_id, name = call.get("id"), call["function"].get("name")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"{where}.id must be a non-empty string")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{where}.function.name must be a non-empty string")
    return call_id, name


def function_tool(tool, where: str) -> dict:
    """Return the ``function`` object of an OpenAI function tool, checked."""
    function = tool.get("function") if isinstance(tool, dict) else None
    if tool.get("type", "function") != "function" or not isinstance(function, dict):
        raise BadRequest(f'{where} must be {{"type": "function", "function": {{...}}}}')
    if not isinstance(function.get("name"), str) or not function["name"]:
        raise BadRequest(f"{where}.function.name must be a non-empty string")
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise BadRequest(f"{where}.function.parameters must be an object")
    return function


def forced_function(choice: dict) -> str:
    """Return the function name a ``{"type": "function", ...}`` tool_choice forces."""
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else choice.get("name")
    if choice.get("type") != "function" or not isinstance(name, str) or not name:
        raise BadRequest('tool_choice must be auto, none, required or {"type": "function", ...}')
    return name
