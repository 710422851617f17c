// `k6/execution`: the parts scripts here use.
import { vu as vuId, state } from './context.mjs';

const execution = {
  vu: {
    get idInTest() {
      return vuId;
    },
    get iterationInScenario() {
      return state.iterationInScenario;
    },
    get iterationInInstance() {
      return state.iteration;
    },
  },
  scenario: {
    get name() {
      return state.scenario;
    },
  },
  test: {
    abort(reason) {
      const e = new Error(`test aborted: ${reason ?? ''}`);
      e.abortTest = true;
      throw e;
    },
  },
};
export const { vu, scenario, test } = execution;
export default execution;
