"""SpiffWorkflow glue: parsing with error messages, restricted scripts, (de)serialization, projections.

Nothing outside app/workflow/ touches SpiffWorkflow objects; services.py talks to this module only.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from lxml import etree
from RestrictedPython import compile_restricted, limited_builtins, safe_builtins, utility_builtins
from RestrictedPython.Eval import default_guarded_getitem, default_guarded_getiter
from RestrictedPython.Guards import full_write_guard, guarded_iter_unpack_sequence, safer_getattr
from SpiffWorkflow.bpmn import BpmnEvent, BpmnWorkflow
from SpiffWorkflow.bpmn.parser.ValidationException import ValidationException
from SpiffWorkflow.bpmn.script_engine import PythonScriptEngine
from SpiffWorkflow.bpmn.script_engine.python_environment import BasePythonScriptEngineEnvironment
from SpiffWorkflow.bpmn.serializer import BpmnWorkflowSerializer
from SpiffWorkflow.bpmn.specs.event_definitions.message import MessageEventDefinition
from SpiffWorkflow.exceptions import SpiffWorkflowException, WorkflowException
from SpiffWorkflow.spiff.parser import VALIDATOR, SpiffBpmnParser
from SpiffWorkflow.spiff.serializer.config import SPIFF_CONFIG
from SpiffWorkflow.spiff.specs.event_definitions import MessageEventDefinition as SpiffMessageEventDefinition
from SpiffWorkflow.util.task import TaskState

BPMN_NS = "http://www.omg.org/spec/BPMN/20100524/MODEL"


class BpmnInvalid(Exception):
    """A BPMN/DMN document that cannot be deployed; message is Chinese and names the element."""

    def __init__(self, message: str, element: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.element = element


class EngineError(Exception):
    """A running workflow failed (script error, bad expression); message names the task."""

    def __init__(self, message: str, task_name: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.task_name = task_name


# ---------------------------------------------------------------- restricted scripts

_INPLACE = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
    "//=": operator.ifloordiv, "%=": operator.imod, "**=": operator.ipow, "|=": operator.ior, "&=": operator.iand,
}


def _inplacevar(op: str, x: Any, y: Any) -> Any:
    return _INPLACE[op](x, y)


def _base_globals() -> dict[str, Any]:
    builtins = dict(safe_builtins)
    builtins.update(limited_builtins)
    builtins.update(utility_builtins)
    for name in ("sum", "min", "max", "any", "all", "sorted", "enumerate", "dict", "list", "map", "filter",
                 "reversed", "len", "range", "zip", "round", "abs", "str", "int", "float", "bool", "isinstance"):
        builtins[name] = __builtins__[name] if isinstance(__builtins__, dict) else getattr(__builtins__, name)
    return {
        "__builtins__": builtins,
        "_getattr_": safer_getattr,
        "_getitem_": default_guarded_getitem,
        "_getiter_": default_guarded_getiter,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_write_": full_write_guard,
        "_inplacevar_": _inplacevar,
        "_print_": None,
    }


_code_cache: dict[tuple[str, str], Any] = {}
_cache_lock = threading.Lock()


class ScriptRefused(RuntimeError):
    """A BPMN script or expression that the restricted compiler does not allow."""


def _compile(source: str, mode: Literal["exec", "eval"]):
    key = (source, mode)
    code = _code_cache.get(key)
    if code is None:
        try:
            code = compile_restricted(source, f"<bpmn-{mode}>", mode)
        except SyntaxError as exc:
            reasons = exc.args if exc.args and isinstance(exc.args[0], str) and len(exc.args) > 1 else (exc.msg,)
            raise ScriptRefused("脚本不被允许或有语法错误：" + "；".join(str(r) for r in reasons)) from None
        with _cache_lock:
            if len(_code_cache) > 5000:
                _code_cache.clear()
            _code_cache[key] = code
    return code


@dataclass
class Effects:
    """Side effects that scripts request; the service layer carries them out in its transaction."""

    notifications: list[dict[str, Any]] = field(default_factory=list)


_effects = threading.local()


def current_effects() -> Effects:
    eff = getattr(_effects, "value", None)
    if eff is None:
        eff = Effects()
        _effects.value = eff
    return eff


def reset_effects() -> Effects:
    old = current_effects()
    _effects.value = Effects()
    return old


def _script_helpers() -> dict[str, Any]:
    def notify(role: str, title: str, body: str = "", link: str | None = None) -> None:
        current_effects().notifications.append({"role": role, "title": title, "body": body, "link": link})

    def notify_initiator(title: str, body: str = "", link: str | None = None) -> None:
        current_effects().notifications.append({"initiator": True, "title": title, "body": body, "link": link})

    def now_iso() -> str:
        return datetime.now(UTC).isoformat()

    def add_days(iso_date: str, n: int) -> str:
        return (date.fromisoformat(iso_date[:10]) + timedelta(days=int(n))).isoformat()

    return {"notify": notify, "notify_initiator": notify_initiator, "now_iso": now_iso, "add_days": add_days}


class RestrictedEnvironment(BasePythonScriptEngineEnvironment):
    """Task-data environment whose scripts and expressions are compiled by RestrictedPython:
    no imports, no dunder attributes, no open(); a process admin's upload cannot run arbitrary Python."""

    def __init__(self) -> None:
        super().__init__(_script_helpers())
        self._base = _base_globals()

    def _globals(self, context: dict, external: dict | None) -> dict[str, Any]:
        g = dict(self._base)
        g.update(self.globals)
        g.update(external or {})
        g.update(context)
        return g

    def evaluate(self, expression, context, external_context=None):
        return eval(_compile(expression, "eval"), self._globals(context, external_context))

    def execute(self, script, context, external_context=None):
        g = self._globals(context, external_context)
        before = set(g)
        exec(_compile(script, "exec"), g)
        reserved = set(self._base) | set(self.globals) | set(external_context or {})
        for key, value in g.items():
            if key in reserved or callable(value) or key.startswith("_"):
                continue
            context[key] = value
        for key in list(context):
            if key not in g and key in before:
                del context[key]
        return True

    def call_service(self, context, **kwargs):
        raise WorkflowException("服务任务暂不支持，请改用脚本任务")


def make_script_engine() -> PythonScriptEngine:
    return PythonScriptEngine(environment=RestrictedEnvironment())


SCRIPT_ENGINE = make_script_engine()

# ---------------------------------------------------------------- parsing

_LOCAL_NAMES = {
    "userTask": "用户任务", "scriptTask": "脚本任务", "exclusiveGateway": "排他网关", "parallelGateway": "并行网关",
    "sequenceFlow": "连线", "startEvent": "开始事件", "endEvent": "结束事件", "businessRuleTask": "业务规则任务",
    "boundaryEvent": "边界事件", "intermediateCatchEvent": "中间捕获事件", "process": "流程",
}


def _element_label(node) -> str:
    if node is None:
        return ""
    tag = etree.QName(node).localname
    name = node.get("name") or ""
    ident = node.get("id") or ""
    kind = _LOCAL_NAMES.get(tag, tag)
    return f"{kind}「{name or ident}」（id={ident}）" if ident or name else kind


def _explain(exc: Exception) -> str:
    text = str(exc)
    if "is not connected" in text or "No outgoing" in text.lower():
        return "元素没有连出的连线"
    if "Expected 'process' element" in text:
        return "文件中没有可执行的流程"
    return text.split("\n")[0][:300]


@dataclass
class ParsedVersion:
    key: str
    name: str
    spec: Any
    subprocess_specs: dict
    task_extensions: dict[str, dict]
    task_names: dict[str, str]
    lanes: dict[str, str | None]
    user_tasks: list[str]
    messages: list[str]
    bpmn_ids: set[str] = field(default_factory=set)


def parse_documents(bpmn_xml: str, dmn_docs: dict[str, str] | None = None, *, expected_key: str | None = None) -> ParsedVersion:
    """Parse one BPMN document (plus DMN) into specs. Raises BpmnInvalid with a Chinese message naming the element."""
    parser = SpiffBpmnParser(validator=VALIDATOR)
    try:
        root = etree.fromstring(bpmn_xml.encode("utf-8"), parser=etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as exc:
        raise BpmnInvalid(f"BPMN 文件不是合法的 XML：第 {exc.lineno} 行，{exc.msg}") from exc
    try:
        for name, text in (dmn_docs or {}).items():
            try:
                droot = etree.fromstring(text.encode("utf-8"), parser=etree.XMLParser(resolve_entities=False, no_network=True))
            except etree.XMLSyntaxError as exc:
                raise BpmnInvalid(f"决策表 {name} 不是合法的 XML：第 {exc.lineno} 行，{exc.msg}") from exc
            parser.add_dmn_xml(droot, filename=name)
        parser.add_bpmn_xml(root, filename="upload.bpmn")
        executable = [p.get("id") for p in root.iter(f"{{{BPMN_NS}}}process") if p.get("isExecutable", "true") != "false"]
        if not executable:
            raise BpmnInvalid("文件中没有可执行的流程（bpmn:process isExecutable=true）")
        key = expected_key or executable[0]
        if key not in executable:
            raise BpmnInvalid(f"流程标识应为「{key}」，文件中的流程为：{'、'.join(executable)}", element=key)
        if not any(etree.QName(el).localname == "BPMNDiagram" for el in root):
            raise BpmnInvalid("流程文件缺少图形布局（BPMNDiagram），无法显示流程图；请在建模器中保存后再上传")
        spec = parser.get_spec(key)
        subprocess_specs = parser.get_subprocess_specs(key)
    except BpmnInvalid:
        raise
    except ValidationException as exc:
        node = None
        ident = getattr(exc, "id", None) or getattr(exc, "node_id", None)
        if ident:
            found = root.xpath("//*[@id=$ident]", ident=ident)
            node = found[0] if found else None
        label = _element_label(node) if node is not None else (f"元素 id={ident}" if ident else "")
        el_name = getattr(exc, "name", None)
        if not label and el_name:
            label = f"元素「{el_name}」"
        raise BpmnInvalid(f"流程校验失败：{label or '未知元素'}：{_explain(exc)}", element=ident) from exc
    except (SpiffWorkflowException, etree.DocumentInvalid) as exc:
        raise BpmnInvalid(f"流程校验失败：{_explain(exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - any parser failure is a refused upload, never a 500
        raise BpmnInvalid(f"流程无法解析：{_explain(exc)}") from exc

    extensions: dict[str, dict] = {}
    names: dict[str, str] = {}
    lanes: dict[str, str | None] = {}
    user_tasks: list[str] = []
    messages: list[str] = []
    all_specs = [spec, *subprocess_specs.values()]
    for s in all_specs:
        for tname, tspec in s.task_specs.items():
            extensions[tname] = dict(getattr(tspec, "extensions", {}) or {})
            names[tname] = getattr(tspec, "bpmn_name", None) or tname
            lanes[tname] = getattr(tspec, "lane", None)
            if getattr(tspec, "manual", False):
                user_tasks.append(tname)
            ev = getattr(tspec, "event_definition", None)
            if isinstance(ev, MessageEventDefinition):
                messages.append(ev.name)
    for tname in user_tasks:
        ext = extensions.get(tname, {})
        if not ext.get("formJsonSchemaFilename"):
            raise BpmnInvalid(f"用户任务「{names[tname]}」（id={tname}）没有指定表单（formJsonSchemaFilename）", element=tname)
        if not lanes.get(tname) and (ext.get("properties") or {}).get("assignee") != "initiator":
            raise BpmnInvalid(f"用户任务「{names[tname]}」（id={tname}）不在任何泳道中，无法确定处理角色", element=tname)
    return ParsedVersion(
        key=key, name=next((el.get("name") for el in root.iter(f"{{{BPMN_NS}}}process") if el.get("id") == key and el.get("name")), key), spec=spec, subprocess_specs=subprocess_specs,
        task_extensions=extensions, task_names=names, lanes=lanes, user_tasks=user_tasks, messages=sorted(set(messages)),
        bpmn_ids={el.get("id") for el in root.iter() if el.get("id")},
    )


def process_name(bpmn_xml: str, key: str) -> str:
    root = etree.fromstring(bpmn_xml.encode("utf-8"), parser=etree.XMLParser(resolve_entities=False, no_network=True))
    for p in root.iter(f"{{{BPMN_NS}}}process"):
        if p.get("id") == key:
            return p.get("name") or key
    return key


def referenced_decisions(bpmn_xml: str) -> set[str]:
    root = etree.fromstring(bpmn_xml.encode("utf-8"), parser=etree.XMLParser(resolve_entities=False, no_network=True))
    return {el.text.strip() for el in root.iter("{http://spiffworkflow.org/bpmn/schema/1.0/core}calledDecisionId") if el.text}


def dmn_decision_ids(dmn_xml: str) -> set[str]:
    root = etree.fromstring(dmn_xml.encode("utf-8"), parser=etree.XMLParser(resolve_entities=False, no_network=True))
    return {el.get("id") for el in root.iter() if etree.QName(el).localname == "decision" and el.get("id")}


# ---------------------------------------------------------------- running

_serializer = BpmnWorkflowSerializer(BpmnWorkflowSerializer.configure(SPIFF_CONFIG))


def new_workflow(parsed: ParsedVersion, data: dict[str, Any]) -> BpmnWorkflow:
    wf = BpmnWorkflow(parsed.spec, parsed.subprocess_specs, script_engine=SCRIPT_ENGINE)
    start = wf.get_tasks(state=TaskState.READY)
    for t in start:
        t.data.update(data)
    wf.task_tree.data.update(data)
    return wf


def set_data_everywhere(wf: BpmnWorkflow, data: dict[str, Any]) -> None:
    """Put `data` on every task the workflow and its subprocesses have reached (future ones inherit it when
    they are reached): what running from a start that carried the data gives when nothing on the way reads or
    changes it."""
    for w in (wf, *wf.subprocesses.values()):
        for t in w.tasks.values():
            if not t.has_state(TaskState.PREDICTED_MASK | TaskState.FUTURE):
                t.data.update(data)


def dumps(wf: BpmnWorkflow) -> str:
    return _serializer.serialize_json(wf)


def loads(text: str) -> BpmnWorkflow:
    wf = _serializer.deserialize_json(text)
    wf.script_engine = SCRIPT_ENGINE
    return wf


# ---- compact serialization: the state without the spec. The spec of a version is immutable and cached,
# so storing it in every instance (15–25 KB for a loop) costs disk, and rebuilding it on each load costs
# most of a deserialization. Compact texts carry a marker and are restored against the cached spec.
COMPACT_MARK = "medloop_compact"


def _workflow_converter():
    typename = _serializer.registry.typenames[BpmnWorkflow]
    return _serializer.registry.convert_to_dict[typename].args[1].__self__


def dumps_compact(wf: BpmnWorkflow) -> str:
    import json

    from SpiffWorkflow.bpmn.serializer.default.workflow import WorkflowConverter

    conv = _workflow_converter()
    registry = _serializer.registry
    registry._encoder_mode = True
    try:
        dct = WorkflowConverter.to_dict(conv, wf)
        dct["subprocesses"] = conv.mapping_to_dict(wf.subprocesses)
        dct["bpmn_events"] = registry.convert(wf.bpmn_events)
        dct[_serializer.VERSION_KEY] = _serializer.VERSION
        dct[COMPACT_MARK] = True
        return json.dumps(dct, cls=_serializer._encoder_cls)
    finally:
        registry._encoder_mode = False


def loads_any(text: str, parsed_version: ParsedVersion) -> BpmnWorkflow:
    """Restore a full or compact serialization (compact ones against the version's cached spec)."""
    import json
    from uuid import UUID

    if COMPACT_MARK not in text[-80:] and f'"{COMPACT_MARK}"' not in text:
        return loads(text)
    dct = json.loads(text, cls=_serializer.json_decoder_cls)
    dct.pop(COMPACT_MARK, None)
    conv = _workflow_converter()
    wf = BpmnWorkflow(parsed_version.spec, parsed_version.subprocess_specs, deserializing=True)
    wf.tasks = conv.mapping_from_dict(dct["tasks"], UUID, workflow=wf)
    wf.task_tree = wf.tasks.get(UUID(dct["root"]))
    conv.set_default_attributes(wf, dct)
    conv.subprocesses_from_dict(dct["subprocesses"], wf)
    wf.bpmn_events = _serializer.registry.restore(dct.pop("bpmn_events", []))
    wf.script_engine = SCRIPT_ENGINE
    return wf


def run(wf: BpmnWorkflow, *, refresh_timers: bool = False) -> None:
    """Advance engine tasks; a due timer needs a refresh and a second pass."""
    try:
        if refresh_timers:
            wf.refresh_timers()
        wf.do_engine_steps()
        # do_engine_steps refreshes timers at its end: a timer that just came due is READY, not run yet
        if wf.get_tasks(state=TaskState.READY, manual=False):
            wf.do_engine_steps()
    except Exception as exc:  # noqa: BLE001 - scripts and expressions may raise anything
        task = getattr(exc, "task", None) or getattr(exc, "task_spec", None)
        name = getattr(getattr(task, "task_spec", task), "bpmn_name", None) or getattr(task, "name", None)
        raise EngineError(f"流程执行出错（{name or '未知步骤'}）：{str(exc).splitlines()[0][:300]}", name) from exc


def deliver_and_step(wf: BpmnWorkflow, name: str, payload: dict[str, Any]) -> None:
    """Deliver a message and advance, cheaply for message chains (the closed-loop hot path).

    The waiting catch task is found in the event manager before sending; once caught it is run directly,
    and when the chain's next node is now WAITING nothing else can be ready, so do_engine_steps' tree walks
    are skipped. Anything else (an end event, a gateway, a boundary path) takes the full do_engine_steps."""
    target = next((t for t in wf.event_manager.tasks.values()
                   if getattr(getattr(t.task_spec, "event_definition", None), "name", None) == name), None)
    send_message(wf, name, payload)
    try:
        if target is not None and target.state == TaskState.READY:
            target.run()
            if any(c.state == TaskState.WAITING for c in target.children):
                return
            if _run_onward(wf, target):
                return
        wf.do_engine_steps()
    except Exception as exc:  # noqa: BLE001
        raise EngineError(f"流程执行出错：{str(exc).splitlines()[0][:300]}") from exc


def _ready_engine_task(t: Any) -> bool:
    return t.state == TaskState.READY and not t.task_spec.manual


def _run_onward(wf: BpmnWorkflow, start: Any) -> bool:
    """After a caught message: run the engine tasks that became ready from it (an end event, the subprocess that
    it completes, the join and end event after that) by following them, instead of do_engine_steps' repeated
    walks of every task tree. Returns False (the caller then runs do_engine_steps, which finishes whatever is
    left) unless, at the end, one walk finds no engine task ready anywhere."""
    queue = [c for c in start.children if _ready_engine_task(c)]
    if not queue:
        return False
    steps = 0
    while queue:
        steps += 1
        if steps > 200:
            return False
        task = queue.pop(0)
        if not _ready_engine_task(task):
            continue
        task.run()
        queue.extend(c for c in task.children if _ready_engine_task(c))
        if not queue:
            # a subprocess whose end event just ran is complete: its task in the parent moves on, as
            # do_engine_steps does after draining the subprocess
            for sub in list(wf.subprocesses.values()):
                if sub.parent_task_id is None or not sub.is_completed():
                    continue
                parent = wf.get_task_from_id(sub.parent_task_id)
                if parent is not None and parent.state != TaskState.COMPLETED:
                    parent.task_spec._update(parent)
                    queue.extend(c for c in (parent, *parent.children) if _ready_engine_task(c))
    if any(True for _t in wf.get_tasks(state=TaskState.READY, manual=False)):
        return False
    wf.refresh_timers()
    return True


@dataclass
class ReadyTask:
    guid: str
    spec_name: str
    name: str
    lane: str | None
    extensions: dict
    data: dict


def ready_user_tasks(wf: BpmnWorkflow, parsed: ParsedVersion) -> list[ReadyTask]:
    out = []
    for t in wf.get_tasks(state=TaskState.READY, manual=True):
        spec_name = t.task_spec.name
        out.append(ReadyTask(
            guid=str(t.id), spec_name=spec_name, name=parsed.task_names.get(spec_name, spec_name),
            lane=parsed.lanes.get(spec_name), extensions=parsed.task_extensions.get(spec_name, {}), data=dict(t.data),
        ))
    return out


def complete_user_task(wf: BpmnWorkflow, guid: str, data: dict[str, Any]) -> None:
    from uuid import UUID

    task = wf.get_task_from_id(UUID(guid))
    if task is None or task.state != TaskState.READY:
        raise EngineError("该任务已不处于待处理状态")
    task.data.update(data)
    try:
        task.run()
    except Exception as exc:  # noqa: BLE001
        raise EngineError(f"提交失败（{task.task_spec.bpmn_name or task.task_spec.name}）：{str(exc).splitlines()[0][:300]}") from exc


def completed_spec_names(wf: BpmnWorkflow, parsed: ParsedVersion) -> list[str]:
    names = {t.task_spec.name for t in wf.get_tasks(state=TaskState.COMPLETED)}
    return sorted(n for n in names if n in parsed.bpmn_ids)


def current_spec_names(wf: BpmnWorkflow, parsed: ParsedVersion) -> list[str]:
    # a waiting boundary event is an attachment of the current task, not a place the flow stands
    names = {t.task_spec.name for t in wf.get_tasks(state=TaskState.READY | TaskState.WAITING | TaskState.STARTED)
             if "Boundary" not in type(t.task_spec).__name__}
    return sorted(n for n in names if n in parsed.bpmn_ids)


def is_completed(wf: BpmnWorkflow) -> bool:
    return bool(wf.completed)


def end_data(wf: BpmnWorkflow) -> dict[str, Any]:
    return dict(wf.data) | dict(wf.last_task.data if wf.last_task else {})


def workflow_data(wf: BpmnWorkflow) -> dict[str, Any]:
    last = wf.last_task
    return dict(last.data) if last is not None else dict(wf.data)


@dataclass
class Waiting:
    timers: list[datetime]
    messages: list[tuple[str, dict]]


def waiting(wf: BpmnWorkflow) -> Waiting:
    timers: list[datetime] = []
    messages: list[tuple[str, dict]] = []
    for ev in wf.waiting_events():
        if "Timer" in ev.event_type or "Duration" in ev.event_type or "TimeDate" in ev.event_type:
            if isinstance(ev.value, str):
                try:
                    dt = datetime.fromisoformat(ev.value)
                    timers.append(dt if dt.tzinfo else dt.replace(tzinfo=UTC))
                except ValueError:
                    pass
            elif isinstance(ev.value, dict) and ev.value.get("next"):
                timers.append(datetime.fromisoformat(ev.value["next"]))
        elif "Message" in ev.event_type:
            messages.append((ev.name, dict(ev.correlations or {})))
    return Waiting(timers=timers, messages=messages)


def send_message(wf: BpmnWorkflow, name: str, payload: dict[str, Any], correlations: dict[str, Any] | None = None) -> None:
    """Deliver a message event; raises EngineError when nothing in the workflow waits for it."""
    event = BpmnEvent(SpiffMessageEventDefinition(name), payload, correlations or {})
    try:
        wf.send_event(event)
    except SpiffWorkflowException as exc:
        raise EngineError(f"流程未在等待消息「{name}」：{str(exc).splitlines()[0][:200]}") from exc
    except Exception as exc:  # noqa: BLE001
        raise EngineError(f"流程未在等待消息「{name}」") from exc


def cancel(wf: BpmnWorkflow) -> None:
    wf.cancel()


Hook = Callable[..., Any]


def migrate(wf: BpmnWorkflow, parsed_new: ParsedVersion) -> list[str]:
    """Move a running workflow onto a new spec where the diff allows it.
    Returns the names of tasks whose specs changed; raises EngineError when a task the flow stands on
    (READY/WAITING) no longer exists in the new version, or when subprocesses are running."""
    from SpiffWorkflow.bpmn.util.diff import diff_workflow, migrate_workflow

    if wf.subprocesses:
        raise EngineError("实例包含运行中的子流程，暂不支持迁移")
    top, _subs = diff_workflow(_serializer.registry, wf, parsed_new.spec, parsed_new.subprocess_specs)
    live = TaskState.READY | TaskState.WAITING | TaskState.STARTED
    stuck = [t for t in top.removed if t.state & live]
    if stuck:
        names = "、".join(sorted({getattr(t.task_spec, "bpmn_name", None) or t.task_spec.name for t in stuck}))
        raise EngineError(f"当前所在环节「{names}」在新版本中已不存在，不能迁移")
    changed = sorted({getattr(t.task_spec, "bpmn_name", None) or t.task_spec.name for t in top.changed})
    migrate_workflow(top, wf, parsed_new.spec)
    wf.subprocess_specs = parsed_new.subprocess_specs
    return changed
